"""Face detection and alignment for ordinary photos: the face found, turned upright and cropped as FER+ crops are.

MediaPipe's Face Landmarker (``face_landmarker.task``: a face detector, then 478 landmarks) finds the face; a
similarity transform (rotation, uniform scale, shift) puts its two iris centres and its mouth centre where FER+
crops hold them (:data:`TEMPLATE`), and the photo is resampled through it into a square crop. The transform travels
with the crop (:class:`Alignment`, recorded in the record's ``meta["aligned_crop"]``), so an edited crop can be
pasted back into the photo (:func:`paste_back`).

Used by ``prepare --align``, ``edit --align`` and the layout faces of ``generate --layout`` (through
:func:`synfer.generator.layout.list_faces`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: Where FER+ crops hold the two iris centres and the mouth centre, as fractions of the side (x, y): the mean over
#: 550 of the first 600 FER+ train faces in which the Face Landmarker found a face (faces edge-padded 24 px a side,
#: upscaled 4x; left eye (0.3185, 0.3849), right eye (0.6742, 0.3820), mouth (0.5031, 0.7808)), made symmetric.
TEMPLATE = np.array([[0.3222, 0.3835], [0.6778, 0.3835], [0.5, 0.7808]])
#: FaceMesh landmarks averaged into those points: the iris centres 468 and 473, the inner lip points 13 and 14.
TEMPLATE_LANDMARKS = ((468,), (473,), (13, 14))


@dataclass(frozen=True)
class Alignment:
    """Where a crop came from: ``matrix`` (2 x 3) maps a crop pixel (x, y, 1) to the photo's pixel; ``size`` is the
    crop's side, ``photo_size`` the photo's (width, height)."""

    matrix: tuple[tuple[float, float, float], tuple[float, float, float]]
    size: int
    photo_size: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"matrix": [list(r) for r in self.matrix], "size": self.size, "photo_size": list(self.photo_size)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alignment:
        m = [tuple(float(v) for v in row) for row in d["matrix"]]
        return cls((m[0], m[1]), int(d["size"]), (int(d["photo_size"][0]), int(d["photo_size"][1])))

    def inverse(self) -> np.ndarray:
        """(2, 3): photo pixel -> crop pixel."""
        full = np.vstack([np.asarray(self.matrix), [0.0, 0.0, 1.0]])
        return np.linalg.inv(full)[:2]


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity transform (rotation, uniform scale, shift; no reflection) taking the points
    ``src`` (N, 2) onto ``dst`` (N, 2), as a (2, 3) matrix (Umeyama 1991)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ sign @ vt
    scale = (sig * np.diag(sign)).sum() / s.var(0).sum()
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


class FaceAligner:
    """Finds the most prominent face of a photo and crops it aligned (see the module docstring).

    Args:
        model_path: MediaPipe's ``face_landmarker.task``.
        size: side of the aligned crop in pixels.
        min_confidence: the detector's threshold; below it a photo has no face.
    """

    def __init__(self, model_path: str | Path, size: int = 128, min_confidence: float = 0.5) -> None:
        from .au.mediapipe_estimator import MODEL_HELP, read_bundle

        if size < 8:
            raise ValueError(f"the aligned crop's side must be at least 8 px; got {size}.")
        read_bundle(model_path, ())  # a clear error for a missing or wrong file
        try:
            from mediapipe.tasks import python as mp_tasks
            from mediapipe.tasks.python import vision
        except ImportError as e:
            raise ImportError(f"Face alignment needs mediapipe: pip install 'synfer[au]'. {MODEL_HELP}") from e
        options = vision.FaceLandmarkerOptions(
            base_options=mp_tasks.BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.IMAGE, num_faces=1,
            min_face_detection_confidence=min_confidence, min_face_presence_confidence=min_confidence)
        self._landmarker = vision.FaceLandmarker.create_from_options(options)
        self.model_path, self.size = Path(model_path), int(size)

    def landmarks(self, photo: Image.Image) -> np.ndarray | None:
        """The face's 478 landmarks (478, 2) in the photo's pixels, or None where no face is found."""
        import mediapipe as mp

        rgb = np.ascontiguousarray(np.asarray(photo.convert("RGB")))
        result = self._landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
        if not result.face_landmarks:
            return None
        h, w = rgb.shape[:2]
        return np.array([(p.x * w, p.y * h) for p in result.face_landmarks[0]], dtype=np.float64)

    def align(self, photo: Image.Image) -> tuple[Image.Image, Alignment] | None:
        """The aligned square crop (in the photo's mode) and where it came from, or None where no face is found."""
        marks = self.landmarks(photo)
        if marks is None:
            return None
        points = np.stack([marks[list(idx)].mean(0) for idx in TEMPLATE_LANDMARKS])
        to_crop = similarity(points, TEMPLATE * self.size)
        to_photo = np.linalg.inv(np.vstack([to_crop, [0.0, 0.0, 1.0]]))[:2]
        crop = photo.transform((self.size, self.size), Image.Transform.AFFINE, tuple(to_photo.ravel()),
                               resample=Image.Resampling.BICUBIC)
        rows = tuple(tuple(float(v) for v in r) for r in to_photo)
        return crop, Alignment((rows[0], rows[1]), self.size, photo.size)

    def close(self) -> None:
        self._landmarker.close()

    def __enter__(self) -> FaceAligner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """For provenance: the model file, crop size and template."""
        import hashlib

        return {"aligner": "mediapipe-face-landmarker", "model": str(self.model_path),
                "model_sha256": hashlib.sha256(self.model_path.read_bytes()).hexdigest(), "size": self.size,
                "template": TEMPLATE.tolist()}


def paste_back(photo: Image.Image, face: Image.Image, alignment: Alignment, feather: float = 0.08) -> Image.Image:
    """``face`` (an edit of the aligned crop, any size) warped back into ``photo`` where the crop came from, blended
    through a mask that fades over ``feather`` of the crop's side at its edges. Returns a new image."""
    face = face.convert(photo.mode).resize((alignment.size, alignment.size), Image.Resampling.BICUBIC)
    inverse = tuple(alignment.inverse().ravel())  # photo pixel -> crop pixel, what PIL's AFFINE takes
    warped = face.transform(photo.size, Image.Transform.AFFINE, inverse, resample=Image.Resampling.BICUBIC)
    side, edge = alignment.size, max(1, round(feather * alignment.size))
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).rectangle([edge, edge, side - 1 - edge, side - 1 - edge], fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(edge / 2))
    mask = mask.transform(photo.size, Image.Transform.AFFINE, inverse, resample=Image.Resampling.BILINEAR)
    return Image.composite(warped, photo, mask)
