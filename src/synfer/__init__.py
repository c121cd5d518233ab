"""synfer: labelled facial-expression datasets with text and FACS action-unit control, and the classifiers that
prove their worth.

The public API is imported on first use (``import synfer`` stays light: no torch until a name below is touched)::

    from synfer import load_pipeline, SynferPipeline, DatasetFolder, ExpressionClassifier
"""

from __future__ import annotations

import importlib
from typing import Any

from .core import __version__

#: Public name -> the module that defines it.
_API = {
    "SynferPipeline": "synfer.generator.pipeline",
    "load_pipeline": "synfer.generator.pipeline",
    "AUAdapter": "synfer.models.au_adapter",
    "SemanticGuidance": "synfer.generator.guidance",
    "DatasetFolder": "synfer.core.dataset",
    "DatasetWriter": "synfer.core.dataset",
    "Record": "synfer.core.dataset",
    "load_split": "synfer.core.splits",
    "ExpressionClassifier": "synfer.models.classifiers",
    "DistilledAUEstimator": "synfer.annotate.au.distilled",
    "create_estimator": "synfer.annotate.au",
    "generate": "synfer.synthesize.generate",
    "edit": "synfer.synthesize.edit",
    "label": "synfer.labeling.label",
    "train_fer": "synfer.classifiers.train",
    "evaluate": "synfer.classifiers.evaluate",
    "resolve": "synfer.core.assets",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # imported once
        return value
    raise AttributeError(f"module 'synfer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
