"""Expression classifiers: synfer's small from-scratch backbones, any timm model, and the wrapper that makes them
interchangeable (guidance model, annotator, judge, feature extractor).

Every backbone follows timm's contract::

    forward_features(x: (B, C, H, W)) -> feature map (B, D, h, w)
    forward_head(f, pre_logits=False) -> logits (B, K), or the pooled embedding (B, D) with pre_logits=True

:class:`ExpressionClassifier` wraps a backbone with its preprocessing (resize to the input size, gray<->RGB,
mean/std) so callers pass images in [0, 1] of any size and channel count. It saves as ``config.json`` +
``model.safetensors`` and is rebuilt from the config alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.assets import KINDS, resolve
from ..schema import check_same_order

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: The bundled FER+ classifier (src/synfer/assets/classifiers/<name>): the default guidance model of generation.
DEFAULT_CLASSIFIER = KINDS["classifier"].default


# ----------------------------------------------------------------------------------------------------------------
# synfer's from-scratch backbones for 48-112 px faces
# ----------------------------------------------------------------------------------------------------------------


class _BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs + identity or 1x1 projection)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.short is None else self.short(x)), inplace=True)


class FerResNet(nn.Module):
    """A ResNet sized for small face crops.

    A 3x3 stem (stride ``stem_stride``; 1 keeps all of a 48 px face's detail, 2 halves the cost) and four stages
    of basic blocks; the first stage keeps the resolution, each later one halves it.

    Args:
        num_classes: output classes.
        in_chans: 1 (gray) or 3.
        widths: channels per stage.
        depths: blocks per stage.
        stem_stride: stride of the stem conv.
        first_stage_stride: stride of the first stage (2 downsamples after a full-resolution stem: the stem
            sees every pixel of a small face while the stages cost what a stride-2 stem would).
        drop_rate: dropout before the classifier.
    """

    def __init__(self, num_classes: int, in_chans: int = 1, widths: tuple[int, ...] = (32, 64, 128, 256),
                 depths: tuple[int, ...] = (2, 2, 2, 2), stem_stride: int = 1, first_stage_stride: int = 1,
                 drop_rate: float = 0.3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = widths[-1]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, stem_stride, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, (w, d) in enumerate(zip(widths, depths, strict=True)):
            for j in range(d):
                stride = (first_stage_stride if i == 0 else 2) if j == 0 else 1
                blocks.append(_BasicBlock(cin, w, stride))
                cin = w
        self.stages = nn.Sequential(*blocks)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each block: each block starts as identity
            if isinstance(m, _BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D, H / (8 * stem_stride * first_stage_stride), ...)."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, D, h, w) -> logits (B, K), or pooled features (B, D) with ``pre_logits``."""
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(self.drop(x))

    def get_classifier(self) -> nn.Module:
        """The final linear layer (timm's accessor)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, randomly initialised final layer for ``num_classes`` (timm's; ``global_pool`` is fixed here)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.fc.in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class FerVGG(nn.Module):
    """The FER+ paper's VGG13 shape (Barsoum et al. 2016): conv pairs/triples with max-pool and dropout,
    then two dense layers. Widths are configurable; the paper's are (64, 128, 256, 256) with 1024-unit dense layers.
    """

    def __init__(self, num_classes: int, in_chans: int = 1, widths: tuple[int, ...] = (64, 128, 256, 256),
                 convs: tuple[int, ...] = (2, 2, 3, 3), hidden: int = 1024, drop_rate: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = hidden
        layers: list[nn.Module] = []
        cin = in_chans
        for w, n in zip(widths, convs, strict=True):
            for _ in range(n):
                layers += [nn.Conv2d(cin, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
            layers += [nn.MaxPool2d(2), nn.Dropout(0.25)]
        self.body = nn.Sequential(*layers)
        self.pre = nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(inplace=True), nn.Dropout(drop_rate),
                                 nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(drop_rate))
        self.fc = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre(x)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        """The final linear layer (timm's accessor)."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, randomly initialised final layer for ``num_classes`` (timm's; ``global_pool`` is fixed here)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.fc.in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


#: timm's name of each backbone's first conv (timm adapts it when a checkpoint's channel count differs).
FIRST_CONV = {FerResNet: "stem.0", FerVGG: "body.0"}

SYNFER_BACKBONES: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "fer_resnet18": (FerResNet, {"widths": (64, 128, 256, 512), "depths": (2, 2, 2, 2)}),
    "fer_resnet_s": (FerResNet, {"widths": (32, 64, 128, 256), "depths": (2, 2, 2, 2)}),
    "fer_resnet_xs": (FerResNet, {"widths": (24, 48, 96, 192), "depths": (1, 1, 2, 1)}),
    "fer_vgg13": (FerVGG, {}),
    "fer_vgg13_s": (FerVGG, {"widths": (32, 64, 128, 128), "hidden": 512}),
}


#: Backbone arguments that would make timm fetch or unpickle weights; a classifier's weights come from its folder.
WEIGHT_SOURCE_KWARGS = ("pretrained", "timm_pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                        "checkpoint_path", "cache_dir")


def create_backbone(name: str, num_classes: int, in_chans: int = 1, input_size: int = 48,
                    **kwargs: Any) -> nn.Module:
    """A backbone by name, with random weights: one of synfer's (``fer_resnet_s``, ``fer_vgg13`` ...) or any timm
    architecture. Hub or path references (``hf-hub:...``) and arguments naming a weight source
    (:data:`WEIGHT_SOURCE_KWARGS`) are refused: nothing reaches the network or reads a pickle here; trained weights
    load from a classifier folder's ``model.safetensors`` (:meth:`ExpressionClassifier.from_pretrained`)."""
    if ":" in name:
        raise ValueError(f"architecture {name!r} refers to a hub or a path; give an architecture name (synfer's: "
                         f"{', '.join(SYNFER_BACKBONES)}, or timm's) and load weights from a classifier folder.")
    sources = [k for k in WEIGHT_SOURCE_KWARGS if k in kwargs]
    if sources:
        raise ValueError(f"model_kwargs {sources} would make timm download or unpickle weights; remove them "
                         "(weights load from the classifier folder's model.safetensors).")
    if name in SYNFER_BACKBONES:
        cls, defaults = SYNFER_BACKBONES[name]
        model = cls(num_classes=num_classes, in_chans=in_chans, **{**defaults, **kwargs})
        if isinstance(model, FerVGG):  # materialise the lazy dense layer for this input size
            with torch.no_grad():
                model(torch.zeros(1, in_chans, input_size, input_size))
        return model
    import timm

    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except RuntimeError as e:  # timm raises RuntimeError('Unknown model ...')
        raise ValueError(
            f"Unknown backbone {name!r}: not one of synfer's ({', '.join(SYNFER_BACKBONES)}) nor a timm model "
            f"({e}). List timm's with timm.list_models()."
        ) from e


def timm_pretrained_cfg(architecture: str, label_names: list[str] | None, input_size: tuple[int, int, int],
                        mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` for a classifier (what ``timm.data.resolve_data_config`` reads): input size,
    channels, mean/std, the label names, and the layer names timm's helpers look for."""
    cfg: dict[str, Any] = {"architecture": architecture, "input_size": tuple(input_size),
                           "fixed_input_size": True, "interpolation": "bilinear", "crop_pct": 1.0,
                           "crop_mode": "center", "mean": tuple(mean), "std": tuple(std)}
    if label_names is not None:
        cfg.update(num_classes=len(label_names), label_names=list(label_names))
    if architecture in SYNFER_BACKBONES:
        cfg.update(first_conv=FIRST_CONV[SYNFER_BACKBONES[architecture][0]], classifier="fc")
    return cfg


@dataclass
class ClassifierConfig:
    """Everything needed to rebuild a classifier (saved as ``config.json``).

    Attributes:
        architecture: backbone name (synfer's or timm's).
        label_names: expression names in logit order.
        input_size: (C, H, W) the backbone expects.
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1].
        model_kwargs: extra constructor arguments of the backbone.
        extra: free-form notes (training data, protocol, accuracy), kept for model cards.
    """

    architecture: str
    label_names: list[str]
    input_size: tuple[int, int, int] = (1, 48, 48)
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["format"] = "synfer-classifier"
        # timm's keys, so that timm.create_model("local-dir:<folder>") rebuilds it (synfer reads the ones above)
        d["num_classes"] = len(self.label_names)
        d["model_args"] = dict(self.model_kwargs)
        d["pretrained_cfg"] = timm_pretrained_cfg(self.architecture, self.label_names, self.input_size, self.mean,
                                                  self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = CONFIG_FILE) -> ClassifierConfig:
        if d.get("format") != "synfer-classifier":
            raise ValueError(f"{source}: not a synfer classifier config (missing \"format\": \"synfer-classifier\").")
        try:
            return cls(architecture=d["architecture"], label_names=list(d["label_names"]),
                       input_size=tuple(d["input_size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                       model_kwargs=dict(d.get("model_kwargs", {})), extra=dict(d.get("extra", {})))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{source}: malformed classifier config ({e}).") from e


class ExpressionClassifier(nn.Module):
    """A backbone plus its preprocessing; the unit that training, evaluation, guidance and labelling share.

    ``forward(images)`` takes images in [0, 1], shape (B, C, H, W), any size and 1 or 3 channels, and returns
    logits (B, K) in ``config.label_names`` order. It is differentiable end to end (semantic guidance back-props
    through it).
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        c, h, _ = config.input_size
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model_kwargs.items()}
        self.backbone = create_backbone(config.architecture, len(config.label_names), in_chans=c, input_size=h,
                                        **kwargs)
        self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32).view(1, -1, 1, 1), False)

    @property
    def label_names(self) -> list[str]:
        return self.config.label_names

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, C', H', W') -> normalised (B, C, H, W) at the backbone's input size."""
        c, h, w = self.config.input_size
        if images.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        if images.shape[1] == 3 and c == 1:  # ITU-R 601 luma, as PIL's convert("L")
            wts = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images * wts).sum(1, keepdim=True)
        elif images.shape[1] == 1 and c == 3:
            images = images.expand(-1, 3, -1, -1)
        elif images.shape[1] != c:
            raise ValueError(f"images have {images.shape[1]} channels; the classifier takes 1 or 3 (uses {c}).")
        if images.shape[-2:] != (h, w):
            images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(self.preprocess(images))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.backbone.forward_head(features, pre_logits=pre_logits)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D): the space of FD-FER/KID-FER and of linear probes."""
        return self.forward_head(self.forward_features(images), pre_logits=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def check_labels(self, names: list[str] | tuple[str, ...], source: str) -> None:
        """Refuse a dataset whose expression order differs from this model's."""
        check_same_order("expression", self.label_names, list(names), f"classifier {self.config.architecture}",
                         source)

    # -- files -----------------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (atomically) to ``path``."""
        from safetensors.torch import save_file

        from ..core.dataset import atomic_write_json

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.backbone.state_dict().items()}
        tmp = path / f".tmp-{WEIGHTS_FILE}"
        save_file(state, str(tmp), metadata={"format": "pt"})
        tmp.replace(path / WEIGHTS_FILE)
        atomic_write_json(path / CONFIG_FILE, self.config.to_dict())
        return path

    @classmethod
    def from_pretrained(cls, path_or_name: str | Path, map_location: str | torch.device = "cpu") \
            -> ExpressionClassifier:
        """Load from a folder, or a bundled classifier by short name (:func:`synfer.core.assets.resolve`)."""
        from safetensors.torch import load_file

        path = resolve("classifier", path_or_name)
        cfg_path = path / CONFIG_FILE
        try:
            raw = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{cfg_path}: not valid JSON ({e}); a classifier folder's config.json is written by "
                             "`synfer train-fer`.") from e
        if not isinstance(raw, dict):
            raise ValueError(f"{cfg_path}: a classifier config is a JSON object; this file holds a "
                             f"{type(raw).__name__}.")
        config = ClassifierConfig.from_dict(raw, source=str(cfg_path))
        model = cls(config)
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing; a classifier folder holds config.json + "
                                    f"{WEIGHTS_FILE} (pickled .pt/.bin files are never loaded).")
        try:
            state = load_file(str(weights), device=str(map_location))
            model.backbone.load_state_dict(state)
        except Exception as e:  # safetensors' own error type, or tensors that do not fit the config
            raise ValueError(f"{weights}: not this classifier's safetensors weights ({type(e).__name__}: "
                             f"{str(e)[:200]}); it may be corrupt, pickled, or from another architecture.") from e
        return model.eval()
