"""AU estimation: the estimator interface, synfer's blendshape -> FACS table, and the built-in estimators.

``create_estimator(name, model_path)`` is what ``synfer prepare --estimator NAME`` calls; add an estimator by
adding a factory to :data:`ESTIMATORS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import AUEstimator, AUResult, head_pose_from_landmarks
from .mapping import AU_RULES, BLENDSHAPE_NAMES, MEDIAPIPE_AUS, MEDIAPIPE_AUS_ALL, blendshapes_to_aus

__all__ = ["AUEstimator", "AUResult", "AU_RULES", "BLENDSHAPE_NAMES", "ESTIMATORS", "MEDIAPIPE_AUS",
           "MEDIAPIPE_AUS_ALL", "blendshapes_to_aus", "create_estimator", "head_pose_from_landmarks"]


def _mediapipe(model_path: Path | None, fast: bool, **kwargs: Any) -> AUEstimator:
    from .mediapipe_estimator import MODEL_HELP, MediaPipeAUEstimator

    if model_path is None:
        raise FileNotFoundError(f"The MediaPipe AU estimator needs its model file. {MODEL_HELP}")
    return MediaPipeAUEstimator(model_path, fast=fast, **kwargs)


def _distilled(model_path: Path | None, **kwargs: Any) -> AUEstimator:
    from .distilled import DistilledAUEstimator

    return DistilledAUEstimator.from_pretrained(model_path, **kwargs)


#: Estimator name -> factory(model_path, **options). ``mediapipe``: aligned crops (fast path, no detector);
#: ``mediapipe-full``: arbitrary photos through the MediaPipe Tasks API (with face detection); ``distilled``:
#: synfer's CNN distilled from ``mediapipe`` (model_path None = the bundled one; differentiable, no MediaPipe).
ESTIMATORS: dict[str, Callable[..., AUEstimator]] = {
    "mediapipe": lambda model_path, **kw: _mediapipe(model_path, True, **kw),
    "mediapipe-full": lambda model_path, **kw: _mediapipe(model_path, False, **kw),
    "distilled": _distilled,
}


def create_estimator(name: str, model_path: Path | None = None, **options: Any) -> AUEstimator:
    """An AU estimator by name (see :data:`ESTIMATORS`)."""
    if name not in ESTIMATORS:
        raise ValueError(f"Unknown AU estimator {name!r}; choose one of {', '.join(ESTIMATORS)}.")
    return ESTIMATORS[name](model_path, **options)
