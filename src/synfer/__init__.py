"""synfer: labelled facial-expression datasets with text and FACS action-unit control, and the classifiers that
prove their worth.

The public API is imported on first use (``import synfer`` stays light: no torch until a name below is touched)::

    from synfer import load_pipeline, SynferPipeline, DatasetFolder, ExpressionClassifier

A synfer generator folder also loads with plain diffusers once ``synfer`` is imported (before or after diffusers)::

    import synfer
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(folder)  # a SynferPipeline
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
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


# -- diffusers --------------------------------------------------------------------------------------------------------
# DiffusionPipeline.from_pretrained finds a folder's pipeline class by its model_index.json ``_class_name`` on the
# ``diffusers`` module alone; synfer adds SynferPipeline there. Done as diffusers finishes importing (or now, if it
# already has), so ``import synfer`` alone still imports no torch.
def _register_with_diffusers(module: Any) -> None:
    if "synfer.generator.pipeline" in sys.modules:  # imported (or being imported): it registers itself at its end
        return
    from .generator.pipeline import SynferPipeline

    if getattr(module, "SynferPipeline", None) is not SynferPipeline:
        module.SynferPipeline = SynferPipeline


class _DiffusersImportHook(importlib.abc.MetaPathFinder):
    """Wraps the loader of the ``diffusers`` package once, registering SynferPipeline right after it executes."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "diffusers":
            return None
        sys.meta_path.remove(self)  # one use; the lookup below must not find this finder again
        spec = importlib.util.find_spec("diffusers")
        if spec is None or spec.loader is None:
            return spec
        loader_exec = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            loader_exec(module)
            _register_with_diffusers(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _hook_diffusers() -> None:
    loaded = sys.modules.get("diffusers")
    if loaded is not None and hasattr(loaded, "DiffusionPipeline"):
        _register_with_diffusers(loaded)
    elif loaded is None and not any(isinstance(f, _DiffusersImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _DiffusersImportHook())


_hook_diffusers()
