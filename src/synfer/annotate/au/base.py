"""The AU-estimator interface: images in, AU intensities (and face presence, head pose) out, batched.

Every AU source (MediaPipe blendshapes mapped to FACS, a distilled CNN, OpenGraphAU for users who have it) is an
:class:`AUEstimator`; ``synfer prepare`` only sees this interface.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from ...schema import AUSet

#: What ``estimate`` accepts: PIL images (any mode, any size), or a uint8 batch (N, H, W) gray / (N, H, W, 3) RGB.
ImageBatch = Sequence[Image.Image] | np.ndarray


@dataclass
class AUResult:
    """The estimates for a batch of N images.

    Attributes:
        aus: (N, len(au_set)) float32 in [0, 1], columns in the estimator's ``au_set`` order.
        face_presence: (N,) float32 in [0, 1]: how sure the estimator is that a face is there. An estimator
            with a face detector writes 0 when it finds none, with all-zero ``aus``; one without a detector (the
            fast MediaPipe path) writes its face score and estimates the AUs anyway: the caller thresholds it
            (``prepare --min-face-presence``).
        blendshapes: (N, 52) float32 raw blendshape scores, for estimators that have them, else None.
        head_pose: (N, 3) float32 yaw, pitch, roll in degrees (see :func:`head_pose_from_landmarks` for the
            signs), NaN rows where no face was found; None if the estimator has no pose.
        landmarks: (N, 478, 3) float32 landmark x, y in pixels of the input image and z on the scale of x;
            None if not produced.
    """

    aus: np.ndarray
    face_presence: np.ndarray
    blendshapes: np.ndarray | None = None
    head_pose: np.ndarray | None = None
    landmarks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.aus)

    def au_dict(self, i: int, names: Sequence[str]) -> dict[str, float]:
        """Image ``i``'s AUs as ``{column: value}`` (``names`` = the estimator's ``au_set.names``)."""
        return {n: float(v) for n, v in zip(names, self.aus[i], strict=True)}

    def pose_dict(self, i: int) -> dict[str, float] | None:
        """Image ``i``'s head pose as ``{"yaw", "pitch", "roll"}`` in degrees, or None."""
        if self.head_pose is None or not np.all(np.isfinite(self.head_pose[i])):
            return None
        return {k: round(float(v), 2) for k, v in zip(("yaw", "pitch", "roll"), self.head_pose[i], strict=True)}


@runtime_checkable
class AUEstimator(Protocol):
    """Anything that turns face images into AU intensities.

    Attributes:
        au_set: the AU columns it writes, in order (becomes the dataset header's AU set).
        timings: seconds spent so far per step (``"preprocess"``, ``"landmarks"``, ...), accumulated over calls;
            ``prepare`` copies them into the output header.
    """

    au_set: AUSet
    timings: dict[str, float]

    def estimate(self, images: ImageBatch) -> AUResult:
        """Estimate a batch; never raises for an image without a face (face_presence 0 instead)."""
        ...


@contextmanager
def timed(timings: dict[str, float], step: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block to ``timings[step]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - t0


def as_uint8_arrays(images: ImageBatch) -> list[np.ndarray]:
    """Images as a list of uint8 arrays, (H, W) for gray and (H, W, 3) for colour.

    Gray stays single-channel here (cheaper to pad and resize); estimators repeat it to RGB at the end.
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
            raise ValueError(f"an image batch array must be uint8 (N, H, W) or (N, H, W, 3); got {images.dtype} "
                             f"{images.shape}. Convert with (x * 255).round().astype(np.uint8) if it is in [0, 1].")
        return list(images)
    out = []
    for im in images:
        if not isinstance(im, Image.Image):
            raise TypeError(f"expected PIL images or a uint8 array batch; got {type(im).__name__}.")
        if im.mode not in ("L", "RGB"):
            im = im.convert("L" if im.mode in ("1", "I;16", "I", "F") else "RGB")
        out.append(np.asarray(im))
    return out


def to_rgb(a: np.ndarray) -> np.ndarray:
    """(H, W) gray -> (H, W, 3); RGB unchanged."""
    return np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a


#: FaceMesh landmark indices used for the pose: outer eye corners (subject's right, left), forehead top, chin.
_EYE_R, _EYE_L, _TOP, _CHIN = 33, 263, 10, 152
#: The chin-forehead line of a face looking straight at the camera is not upright: its top (landmark 10, on the
#: hairline) lies nearer the camera, which reads as this much downward pitch. Measured on
#: 274 FER+ test faces against the Tasks API's facial transformation matrix (mean difference 3.4-3.8 degrees).
PITCH_OFFSET_DEG = 3.5


def head_pose_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """A rough head pose from 478 FaceMesh landmarks.

    The face's x axis runs from the subject's right outer eye corner to the left one, its y axis from chin to
    forehead (made orthogonal to x); the facing direction is their cross product. Good to a few degrees for
    words such as "turned slightly to the left", not a calibrated pose estimate.

    Args:
        landmarks: (N, 478, 3) x, y, z with the same unit on all three axes (image x right, y down, z away
            from the camera, as MediaPipe writes them).

    Returns:
        (N, 3) float32 degrees: yaw > 0 the head turns to the subject's left (their nose toward the image's
        right), pitch > 0 the face tilts up, roll > 0 the head leans toward the subject's left shoulder
        (clockwise in the image).
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    x = lm[:, _EYE_L] - lm[:, _EYE_R]
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    up = lm[:, _TOP] - lm[:, _CHIN]
    y = up - np.sum(up * x, axis=1, keepdims=True) * x
    y /= np.linalg.norm(y, axis=1, keepdims=True) + 1e-12
    z = np.cross(x, y)  # (0, 0, -1) for a frontal face: toward the camera
    yaw = np.degrees(np.arctan2(z[:, 0], -z[:, 2]))
    pitch = np.degrees(np.arctan2(-z[:, 1], -z[:, 2])) + PITCH_OFFSET_DEG
    roll = np.degrees(np.arctan2(x[:, 1], x[:, 0]))
    return np.stack([yaw, pitch, roll], axis=1).astype(np.float32)
