"""AU estimation from MediaPipe Face Landmarker blendshapes (``face_landmarker.task``, Apache-2.0, by Google).

Two paths over the same models:

* **fast** (aligned face crops, e.g. FER+): the bundle's ``face_landmarks_detector.tflite`` runs directly on the
  crop with ai-edge-litert, and its 146-landmark subset feeds ``face_blendshapes.tflite``. No face detector: the
  crop is assumed to hold one roughly centred face. Preprocessing reproduces the reference of
  ``shared/data/ferplus/reference_blendshapes.npz`` exactly: pad by edge replication (12 px on a 48 px crop, i.e.
  ``pad_fraction`` 0.25 of the side), resize to 256x256 with PIL's *bicubic* filter (bilinear is off by 0.013
  mean absolute difference, bicubic by 2e-5, the float16 rounding of the reference), RGB in [0, 1]. The face
  flag output is a logit (sigmoid gives the reference's ``face_presence``); landmarks come out in pixels of the
  256x256 input and the blendshape model takes their x, y in those pixels.
  Batching: the landmark model accepts a resized batch dimension, but on CPU a batch of 8-64 costs the same or
  more per image than a loop (5.2-7.0 ms vs 5.3 ms, 1 thread), and the blendshape model's XNNPACK graph refuses
  a batch; both run image by image.
* **full** (``fast=False``, arbitrary photos): the MediaPipe Tasks API ``vision.FaceLandmarker`` with its face
  detector and ``output_face_blendshapes=True``; about 10-30 ms an image on one core here. An image where no
  face is found gets face_presence 0, all-zero AUs and blendshapes, and NaN pose.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ...schema import AUSet
from .base import AUResult, ImageBatch, as_uint8_arrays, head_pose_from_landmarks, timed, to_rgb
from .mapping import BLENDSHAPE_NAMES, MEDIAPIPE_AUS, blendshapes_to_aus

MODEL_HELP = (
    "Download face_landmarker.task from MediaPipe's model page (Face Landmarker, the float16 bundle: "
    "https://ai.google.dev/edge/mediapipe/solutions/vision/face_landmarker#models) and pass its path with "
    "--au-model PATH."
)
LANDMARKS_MEMBER = "face_landmarks_detector.tflite"
BLENDSHAPES_MEMBER = "face_blendshapes.tflite"
INPUT_SIZE = 256
N_LANDMARKS = 478

#: The 146 FaceMesh landmarks whose (x, y) the blendshape model reads, in its input order.
BLENDSHAPE_INPUT_LANDMARKS: tuple[int, ...] = (
    0, 1, 4, 5, 6, 7, 8, 10, 13, 14, 17, 21, 33, 37, 39, 40, 46, 52, 53, 54, 55, 58, 61, 63, 65, 66, 67, 70, 78,
    80, 81, 82, 84, 87, 88, 91, 93, 95, 103, 105, 107, 109, 127, 132, 133, 136, 144, 145, 146, 148, 149, 150,
    152, 153, 154, 155, 157, 158, 159, 160, 161, 162, 163, 168, 172, 173, 176, 178, 181, 185, 191, 195, 197,
    234, 246, 249, 251, 263, 267, 269, 270, 276, 282, 283, 284, 285, 288, 291, 293, 295, 296, 297, 300, 308,
    310, 311, 312, 314, 317, 318, 321, 323, 324, 332, 334, 336, 338, 356, 361, 362, 365, 373, 374, 375, 377,
    378, 379, 380, 381, 382, 384, 385, 386, 387, 388, 389, 390, 397, 398, 400, 402, 405, 409, 415, 454, 466,
    468, 469, 470, 471, 472, 473, 474, 475, 476, 477,
)
_BS_IDX = np.asarray(BLENDSHAPE_INPUT_LANDMARKS)


def read_bundle(model_path: str | Path, members: tuple[str, ...] = (LANDMARKS_MEMBER, BLENDSHAPES_MEMBER)
                ) -> dict[str, bytes]:
    """The named members of a ``face_landmarker.task`` bundle (a zip), read into memory.

    Raises:
        FileNotFoundError: the file is missing (the message says where to get it).
        ValueError: the file is not a Face Landmarker bundle.
    """
    p = Path(model_path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"MediaPipe model {p} not found. {MODEL_HELP}")
    try:
        with zipfile.ZipFile(p) as z:
            names = set(z.namelist())
            missing = [m for m in members if m not in names]
            if missing:
                raise ValueError(f"{p} is a zip but lacks {missing}; is it face_landmarker.task? {MODEL_HELP}")
            return {m: z.read(m) for m in members}
    except zipfile.BadZipFile as e:
        raise ValueError(f"{p} is not a MediaPipe .task bundle (not a zip file). {MODEL_HELP}") from e


def pad_and_resize(a: np.ndarray, pad_fraction: float = 0.25, size: int = INPUT_SIZE
                   ) -> tuple[np.ndarray, float, float, float]:
    """The landmark model's input for one aligned crop.

    Args:
        a: (H, W) gray or (H, W, 3) RGB uint8.
        pad_fraction: margin on every side as a fraction of the longer side, by edge replication (0.25 = the
            reference's 12 px on 48 px); a non-square crop is first padded to a square.

    Returns:
        (size, size, 3) float32 RGB in [0, 1]; and scale, left, top so that input pixel = model pixel * scale
        - (left, top).
    """
    h, w = a.shape[:2]
    side = max(h, w)
    pad = int(round(pad_fraction * side))
    top, left = pad + (side - h) // 2, pad + (side - w) // 2
    bottom, right = pad + side - h - (side - h) // 2, pad + side - w - (side - w) // 2
    widths = ((top, bottom), (left, right)) + (((0, 0),) if a.ndim == 3 else ())
    padded = np.pad(a, widths, mode="edge")
    # Bicubic reproduces the reference exactly; gray is resized once and repeated (identical, 40% faster).
    resized = np.asarray(Image.fromarray(padded).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    full = side + 2 * pad
    return to_rgb(resized) / 255.0, full / size, float(left), float(top)


class MediaPipeAUEstimator:
    """FACS AU intensities from MediaPipe blendshapes, through synfer's table (:mod:`.mapping`).

    Args:
        model_path: ``face_landmarker.task`` (MediaPipe's Face Landmarker bundle, float16).
        fast: True for aligned face crops (landmark + blendshape models only, ~7 ms a face on one core);
            False for arbitrary photos (MediaPipe Tasks API with face detection).
        au_set: the AU columns to produce (default :data:`MEDIAPIPE_AUS`, 22 AUs).
        num_threads: CPU threads for the tflite interpreters (None: the runtime's default).
        pad_fraction: fast path margin (see :func:`pad_and_resize`).
        min_detection_confidence: full path detector and face-presence thresholds.

    Raises:
        FileNotFoundError: the model file is missing (the message says how to get it).
        ImportError: ai-edge-litert (fast) or mediapipe (full) is not installed (``pip install synfer[au]``).
    """

    def __init__(self, model_path: str | Path, fast: bool = True, au_set: AUSet = MEDIAPIPE_AUS,
                 num_threads: int | None = None, pad_fraction: float = 0.25,
                 min_detection_confidence: float = 0.5) -> None:
        self.model_path = Path(model_path)
        self.fast = fast
        self.au_set = au_set
        self.pad_fraction = pad_fraction
        self.timings: dict[str, float] = {}
        blendshapes_to_aus(np.zeros((1, len(BLENDSHAPE_NAMES))), au_set)  # fail now on an AU without a rule
        if fast:
            self._init_fast(num_threads)
        else:
            self._init_full(min_detection_confidence)

    # -- fast path ---------------------------------------------------------------------------------------------
    def _init_fast(self, num_threads: int | None) -> None:
        bundle = read_bundle(self.model_path)  # a missing model is reported first, whatever is installed
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise ImportError("The fast MediaPipe path needs ai-edge-litert: pip install 'synfer[au]'.") from e
        self._lm = Interpreter(model_content=bundle[LANDMARKS_MEMBER], num_threads=num_threads)
        self._bs = Interpreter(model_content=bundle[BLENDSHAPES_MEMBER], num_threads=num_threads)
        self._lm.allocate_tensors()
        self._bs.allocate_tensors()
        self._lm_in = self._lm.get_input_details()[0]["index"]
        outs = self._lm.get_output_details()
        # Find outputs by shape, not position: landmarks (1, 1, 1, 1434) and the face flag logit (1, 1, 1, 1).
        lms = [d["index"] for d in outs if int(np.prod(d["shape"])) == N_LANDMARKS * 3]
        flags = [d["index"] for d in outs if len(d["shape"]) == 4 and int(np.prod(d["shape"])) == 1]
        if len(lms) != 1 or len(flags) != 1:
            raise ValueError(f"{self.model_path}: unexpected landmark model outputs "
                             f"{[(d['name'], d['shape'].tolist()) for d in outs]}. {MODEL_HELP}")
        self._lm_out, self._flag_out = lms[0], flags[0]
        self._bs_in = self._bs.get_input_details()[0]["index"]
        self._bs_out = self._bs.get_output_details()[0]["index"]

    def landmarks_from_input(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Run the landmark model on one preprocessed crop.

        Args:
            x: (256, 256, 3) float32 RGB in [0, 1] (from :func:`pad_and_resize`).

        Returns:
            (478, 3) landmarks in pixels of the 256x256 input (z on the scale of x), and the face presence
            (the sigmoid of the model's face flag logit).
        """
        self._lm.set_tensor(self._lm_in, np.ascontiguousarray(x[None], dtype=np.float32))
        self._lm.invoke()
        lm = self._lm.get_tensor(self._lm_out).reshape(N_LANDMARKS, 3).copy()
        logit = float(self._lm.get_tensor(self._flag_out).ravel()[0])
        return lm, float(1.0 / (1.0 + np.exp(-logit)))

    def blendshapes_from_landmarks(self, landmarks: np.ndarray) -> np.ndarray:
        """The 52 blendshape scores from (478, 2+) landmarks in pixels of the 256x256 model input."""
        pts = np.asarray(landmarks, dtype=np.float32)[_BS_IDX, :2]
        self._bs.set_tensor(self._bs_in, np.ascontiguousarray(pts[None]))
        self._bs.invoke()
        return self._bs.get_tensor(self._bs_out).reshape(-1).copy()

    def _estimate_fast(self, arrays: list[np.ndarray]) -> AUResult:
        n = len(arrays)
        blend = np.zeros((n, len(BLENDSHAPE_NAMES)), np.float32)
        presence = np.zeros(n, np.float32)
        landmarks = np.zeros((n, N_LANDMARKS, 3), np.float32)
        for i, a in enumerate(arrays):
            with timed(self.timings, "preprocess"):
                x, scale, left, top = pad_and_resize(a, self.pad_fraction)
            with timed(self.timings, "landmarks"):
                lm, presence[i] = self.landmarks_from_input(x)
            with timed(self.timings, "blendshapes"):
                blend[i] = self.blendshapes_from_landmarks(lm)
            landmarks[i] = lm * scale  # back to pixels of the caller's image
            landmarks[i, :, 0] -= left
            landmarks[i, :, 1] -= top
        return AUResult(aus=blendshapes_to_aus(blend, self.au_set), face_presence=presence, blendshapes=blend,
                        head_pose=head_pose_from_landmarks(landmarks), landmarks=landmarks)

    # -- full path ---------------------------------------------------------------------------------------------
    def _init_full(self, min_confidence: float) -> None:
        read_bundle(self.model_path, ())  # the same clear error for a missing or wrong file
        try:
            from mediapipe.tasks import python as mp_tasks
            from mediapipe.tasks.python import vision
        except ImportError as e:
            raise ImportError("The full MediaPipe path needs mediapipe: pip install 'synfer[au]'.") from e
        options = vision.FaceLandmarkerOptions(
            base_options=mp_tasks.BaseOptions(model_asset_path=str(self.model_path)),
            running_mode=vision.RunningMode.IMAGE, num_faces=1, output_face_blendshapes=True,
            min_face_detection_confidence=min_confidence, min_face_presence_confidence=min_confidence)
        self._landmarker = vision.FaceLandmarker.create_from_options(options)

    def _estimate_full(self, arrays: list[np.ndarray]) -> AUResult:
        import mediapipe as mp

        n = len(arrays)
        blend = np.zeros((n, len(BLENDSHAPE_NAMES)), np.float32)
        presence = np.zeros(n, np.float32)
        landmarks = np.full((n, N_LANDMARKS, 3), np.nan, np.float32)
        for i, a in enumerate(arrays):
            with timed(self.timings, "preprocess"):
                rgb = np.ascontiguousarray(to_rgb(a))
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
            with timed(self.timings, "landmarker"):
                result = self._landmarker.detect(image)
            if not result.face_landmarks:
                continue  # no face: presence 0, zero blendshapes, NaN landmarks
            h, w = rgb.shape[:2]
            # Tasks API landmarks are normalised (x by width, y by height, z on the scale of x): to pixels.
            landmarks[i] = [(p.x * w, p.y * h, p.z * w) for p in result.face_landmarks[0]]
            for c in result.face_blendshapes[0]:
                blend[i, c.index] = c.score
            presence[i] = 1.0
        aus = blendshapes_to_aus(blend, self.au_set)
        aus[presence == 0] = 0.0
        return AUResult(aus=aus, face_presence=presence, blendshapes=blend,
                        head_pose=head_pose_from_landmarks(landmarks), landmarks=landmarks)

    # -- public ------------------------------------------------------------------------------------------------
    def estimate(self, images: ImageBatch) -> AUResult:
        """AUs of a batch of face images.

        Args:
            images: PIL images (any size; gray or colour) or a uint8 array (N, H, W) / (N, H, W, 3).

        Returns:
            :class:`AUResult` with aus (N, len(au_set)), face_presence (N,), blendshapes (N, 52), head_pose
            (N, 3) and landmarks (N, 478, 3) in pixels of each input image.
        """
        arrays = as_uint8_arrays(images)
        if not arrays:
            k = len(self.au_set)
            return AUResult(np.zeros((0, k), np.float32), np.zeros(0, np.float32),
                            np.zeros((0, len(BLENDSHAPE_NAMES)), np.float32), np.zeros((0, 3), np.float32),
                            np.zeros((0, N_LANDMARKS, 3), np.float32))
        return self._estimate_fast(arrays) if self.fast else self._estimate_full(arrays)

    def close(self) -> None:
        """Release the Tasks API landmarker (full path); the fast path holds nothing that needs closing."""
        landmarker = getattr(self, "_landmarker", None)
        if landmarker is not None:
            landmarker.close()
            self._landmarker = None

    def __enter__(self) -> MediaPipeAUEstimator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict:
        """What to record in a dataset's provenance."""
        return {"estimator": "mediapipe-fast" if self.fast else "mediapipe-full", "model": str(self.model_path),
                "model_sha256": hashlib.sha256(self.model_path.read_bytes()).hexdigest(),
                "au_set": list(self.au_set.names), "pad_fraction": self.pad_fraction if self.fast else None}

