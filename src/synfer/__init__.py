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


# -- diffusers and timm -----------------------------------------------------------------------------------------------
# DiffusionPipeline.from_pretrained finds a folder's pipeline class by its model_index.json ``_class_name`` on the
# ``diffusers`` module alone, and timm.create_model finds architectures in timm's registry: synfer adds its own to
# both as each library finishes importing (or now, if it already has), so ``import synfer`` alone imports no torch.
def _register_with_diffusers(module: Any) -> None:
    if "synfer.generator.pipeline" in sys.modules:  # imported (or being imported): it registers itself at its end
        return
    importlib.import_module("synfer.generator.pipeline")


def _register_with_timm(module: Any) -> None:
    importlib.import_module("synfer.models.timm_models").register()


_REGISTRARS = {"diffusers": _register_with_diffusers, "timm": _register_with_timm}


class _ImportHook(importlib.abc.MetaPathFinder):
    """Wraps the loader of each package in :data:`_REGISTRARS` once, registering synfer's classes with it right
    after it executes."""

    def __init__(self) -> None:
        self.pending = {name for name in _REGISTRARS if name not in sys.modules}
        self.busy: set[str] = set()

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in self.pending or fullname in self.busy:
            return None
        self.busy.add(fullname)  # the lookup below must not find this finder again
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self.busy.discard(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader_exec = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            loader_exec(module)
            # done only now: importlib.util.find_spec (availability checks) also asks this finder, without importing
            self.pending.discard(fullname)
            if not self.pending and self in sys.meta_path:
                sys.meta_path.remove(self)
            # a synfer module importing the package is itself half-imported: registering now would import it
            # again, circularly (synfer.generator.pipeline registers itself when it finishes)
            if not _synfer_importing():
                _REGISTRARS[fullname](module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _hook_imports() -> None:
    for name, registrar in _REGISTRARS.items():
        loaded = sys.modules.get(name)
        if loaded is not None and getattr(loaded, "__spec__", None) is not None and not _initializing(loaded):
            registrar(loaded)
    if not any(isinstance(f, _ImportHook) for f in sys.meta_path):
        hook = _ImportHook()
        if hook.pending:
            sys.meta_path.insert(0, hook)


def _initializing(module: Any) -> bool:
    """Whether ``module`` is part way through its import (in sys.modules, not yet executed to the end)."""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _synfer_importing() -> bool:
    """Whether some synfer module is part way through its import."""
    return any(_initializing(m) for n, m in list(sys.modules.items()) if n.startswith("synfer."))


_hook_imports()
