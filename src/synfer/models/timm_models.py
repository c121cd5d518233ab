"""synfer's classifiers in timm's model registry, so timm's own calls build and describe them.

Registered (``import synfer`` does it as soon as timm is imported, before or after)::

    timm.create_model("fer_resnet_s", num_classes=8)               # an architecture, random weights
    timm.create_model("ferplus-resnet-s", pretrained=True)         # a bundled classifier with its weights
    timm.create_model("local-dir:runs/my-classifier", pretrained=True)  # any synfer classifier folder
    timm.data.resolve_data_config(model=model)                     # its input size, channels, mean/std

A classifier folder's ``config.json`` carries timm's keys (``architecture``, ``num_classes``, ``model_args``,
``pretrained_cfg``) beside synfer's (:class:`~synfer.models.classifiers.ClassifierConfig`), and its weights are
``model.safetensors``, the file timm's local-dir loader looks for first. Nothing here reaches the network: the
bundled models' weights ship in the package.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from torch import nn

from ..core.assets import bundled, resolve
from .classifiers import (
    SYNFER_BACKBONES,
    WEIGHTS_FILE,
    ClassifierConfig,
    create_backbone,
    timm_pretrained_cfg,
)

#: Module-level defaults timm's registry reads (one untagged config per registered name).
default_cfgs: dict[str, dict[str, Any]] = {}


def _build(architecture: str) -> Callable[..., nn.Module]:
    """timm's ``model_cls``: the synfer backbone for the keyword arguments timm resolved."""

    def build(num_classes: int = 8, in_chans: int = 1, img_size: tuple[int, int] | int = 48,
              **kwargs: Any) -> nn.Module:
        size = img_size if isinstance(img_size, int) else int(img_size[0])
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        return create_backbone(architecture, num_classes, in_chans=in_chans, input_size=size, **kwargs)

    return build


def _entrypoint(name: str, architecture: str, model_args: dict[str, Any]) -> Callable[..., nn.Module]:
    """A timm entrypoint named ``name`` building ``architecture`` with ``model_args`` as defaults."""
    from timm.models import build_model_with_cfg

    def create(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        kwargs = {**model_args, **kwargs}
        kwargs.pop("pretrained_model_args", None)  # timm's note of the saved arguments, already merged
        return build_model_with_cfg(_build(architecture), name, pretrained, **kwargs)

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    return create


def register() -> None:
    """Register every synfer architecture and bundled classifier with timm (idempotent)."""
    from timm.models import is_model, register_model

    entries: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
        arch: (arch, {}, timm_pretrained_cfg(arch, None, (1, 48, 48), (0.5,), (0.25,))) for arch in SYNFER_BACKBONES}
    for name in bundled("classifier"):
        folder = resolve("classifier", name)
        config = ClassifierConfig.from_dict(json.loads((folder / "config.json").read_text())).to_dict()
        cfg = dict(config["pretrained_cfg"], file=str(folder / WEIGHTS_FILE))
        entries[name] = (config["architecture"], config["model_args"], cfg)
    for name, (arch, args, cfg) in entries.items():
        if is_model(name) and name in default_cfgs:
            continue
        default_cfgs[name] = cfg
        register_model(_entrypoint(name, arch, args))
