"""FERAnno (SynFER §4): an expression classifier on the generator's own UNet features.

A face is encoded by the generator's VAE, noised only slightly (``timestep`` 1 by default) and passed once through
its frozen UNet under a class-agnostic prompt. :class:`UNetFeatureHooks` reads two kinds of features during that
pass: the output of every up block (multi-scale feature maps) and the cross-attention probabilities of every text
cross-attention layer (averaged over heads, the first ``attention_tokens`` prompt tokens). :class:`FERAnnoHead`
encodes each kind into a grid of tokens, fuses them with a bidirectional cross-attention block (feature tokens
attend to attention tokens and back), pools and predicts the expression with a linear layer. ``kind="probe"`` is
the ablation: global-average-pooled feature maps and one linear layer.

The head is saved as ``config.json`` + ``model.safetensors``; the config names the generator (and its weights'
hash) whose UNet it reads, so :class:`FERAnnotator` can rebuild the whole annotator.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.assets import resolve
from .denoiser import family_of

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "synfer-feranno"
# The pipeline components one FERAnno pass runs through. The AU adapter is not applied, so a head stays valid when
# only the adapter is retrained (or the sampler defaults change).
READ_COMPONENTS = ("vae", "unet", "text_encoder")


def read_weights_sha256(generator_dir: str | Path) -> str:
    """Hash of the weights a FERAnno head depends on: those of ``READ_COMPONENTS`` in a SynferPipeline folder."""
    from ..core.provenance import files_sha256

    return files_sha256(Path(generator_dir), only=READ_COMPONENTS)


# -- reading the UNet ---------------------------------------------------------------------------------------------
class UNetFeatureHooks:
    """Forward hooks that capture, during one UNet forward, what FERAnno reads.

    After a forward: ``features`` holds one (B, C_i, H_i, W_i) map per up block (coarse to fine), ``attention`` one
    (B, T, h_j, w_j) map per text cross-attention layer (softmax over the first ``tokens`` text tokens, mean over
    heads; square latents assumed). Use as a context manager; hooks are removed on exit.
    """

    def __init__(self, unet: nn.Module, tokens: int = 8, text_tokens: int | None = None) -> None:
        self.unet, self.tokens, self.text_tokens = unet, tokens, text_tokens
        self.features: list[torch.Tensor] = []
        self.attention: list[torch.Tensor] = []
        self._handles: list[Any] = []
        self.up_blocks = family_of(unet).feature_blocks(unet)
        self.cross_attention = [m for name, m in unet.named_modules()
                                if name.endswith("attn2") and getattr(m, "is_cross_attention", False)]

    def __enter__(self) -> UNetFeatureHooks:
        for block in self.up_blocks:
            self._handles.append(block.register_forward_hook(self._keep_features))
        for attn in self.cross_attention:
            self._handles.append(attn.register_forward_hook(self._keep_attention, with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def clear(self) -> None:
        self.features, self.attention = [], []

    def _keep_features(self, module: nn.Module, args: Any, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        if out.ndim == 3:  # a transformer block's tokens (B, N, D) on a square latent grid: a (B, D, s, s) map
            b, n, d = out.shape
            side = math.isqrt(n)
            out = out.transpose(1, 2).reshape(b, d, side, side)
        self.features.append(out)

    def _keep_attention(self, attn: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        context = kwargs.get("encoder_hidden_states")
        if context is None and len(args) > 1:
            context = args[1]
        if hidden.ndim != 3 or context is None:
            return
        context = context[:, : (self.text_tokens or context.shape[1])][:, : self.tokens]
        if getattr(attn, "norm_cross", None):
            context = attn.norm_encoder_hidden_states(context)
        b, n, _ = hidden.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"FERAnno reads square latents; a cross-attention layer saw {n} positions.")
        heads = attn.heads
        q = attn.to_q(hidden).view(b, n, heads, -1).transpose(1, 2)
        k = attn.to_k(context).view(b, context.shape[1], heads, -1).transpose(1, 2)
        probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1).mean(1)  # (B, HW, T)
        self.attention.append(probs.transpose(1, 2).reshape(b, -1, side, side))


# -- the head -------------------------------------------------------------------------------------------------------
@dataclass
class FERAnnoConfig:
    """Everything needed to rebuild a FERAnno head (``config.json``).

    Attributes:
        label_names: expressions in logit order.
        feature_channels: channels of each up block's output, coarse to fine.
        attention_layers: number of text cross-attention layers read.
        kind: ``feranno`` (two encoders + bidirectional cross-attention fusion) or ``probe`` (linear on pooled maps).
        attention_tokens: prompt tokens whose attention maps are read.
        grid: the token grid both encoders resample to (grid x grid tokens each).
        dim, heads: token width and attention heads of the fusion block.
        generator: the SynferPipeline folder or bundled name whose UNet is read; generator_sha256 the hash of the
            weights read (``read_weights_sha256``: VAE, UNet, text encoder; heads from before 2026-11-25 hold the
            hash of every weights file of the folder, which is still accepted).
        prompt, timestep: the class-agnostic prompt and the noise level of the single UNet pass.
        extra: training notes for the model card.
    """

    label_names: list[str]
    feature_channels: list[int]
    attention_layers: int
    kind: str = "feranno"
    attention_tokens: int = 8
    grid: int = 6
    dim: int = 96
    heads: int = 4
    generator: str = "bundled"
    generator_sha256: str = ""
    prompt: str = "a photo of a face"
    timestep: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "format": FORMAT}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = CONFIG_FILE) -> FERAnnoConfig:
        if d.get("format") != FORMAT:
            raise ValueError(f"{source}: not a FERAnno config (missing \"format\": \"{FORMAT}\").")
        fields = {k: v for k, v in d.items() if k != "format"}
        try:
            return cls(**fields)
        except TypeError as e:
            raise ValueError(f"{source}: malformed FERAnno config ({e}).") from e


class FusionBlock(nn.Module):
    """Bidirectional cross-attention: each token stream attends to the other (pre-norm, residual), then an MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm_f, self.norm_a = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.f_from_a = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.a_from_f = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp_f = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.mlp_a = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, f: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, D), (B, M, D) -> the same shapes."""
        nf, na = self.norm_f(f), self.norm_a(a)
        f = f + self.f_from_a(nf, na, na, need_weights=False)[0]
        a = a + self.a_from_f(na, nf, nf, need_weights=False)[0]
        return f + self.mlp_f(f), a + self.mlp_a(a)


def _conv_encoder(cin: int, dim: int) -> nn.Sequential:
    groups = math.gcd(8, dim)
    return nn.Sequential(nn.Conv2d(cin, dim, 1), nn.GroupNorm(groups, dim), nn.SiLU(),
                         nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(groups, dim), nn.SiLU())


class FERAnnoHead(nn.Module):
    """The trainable part of FERAnno: UNet features and attention maps -> expression logits (B, K)."""

    def __init__(self, config: FERAnnoConfig) -> None:
        super().__init__()
        if config.kind not in ("feranno", "probe"):
            raise ValueError(f"kind must be 'feranno' or 'probe'; got {config.kind!r}.")
        self.config = config
        k, dim = len(config.label_names), config.dim
        if config.kind == "probe":
            self.head = nn.Linear(sum(config.feature_channels), k)
            return
        self.feature_proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in config.feature_channels)
        self.feature_encoder = _conv_encoder(dim, dim)
        self.attention_encoder = _conv_encoder(config.attention_layers * config.attention_tokens, dim)
        self.position = nn.Parameter(torch.zeros(1, config.grid * config.grid, dim))
        self.fusion = FusionBlock(dim, config.heads)
        self.norm = nn.LayerNorm(2 * dim)
        self.head = nn.Linear(2 * dim, k)

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        g = self.config.grid
        if x.shape[-1] == g:
            return x
        if x.shape[-1] > g:
            return F.adaptive_avg_pool2d(x, g)
        return F.interpolate(x, size=(g, g), mode="bilinear", align_corners=False)

    def forward(self, features: Sequence[torch.Tensor], attention: Sequence[torch.Tensor]) -> torch.Tensor:
        """features: per up block (B, C_i, H_i, W_i); attention: per layer (B, T, h_j, w_j) -> logits (B, K)."""
        if len(features) != len(self.config.feature_channels):
            raise ValueError(f"{len(features)} feature maps for a head built for {len(self.config.feature_channels)}"
                             " (another generator's UNet?).")
        features = [f.float() for f in features]
        if self.config.kind == "probe":
            return self.head(torch.cat([f.mean(dim=(2, 3)) for f in features], dim=1))
        if len(attention) != self.config.attention_layers:
            raise ValueError(f"{len(attention)} attention maps for a head built for {self.config.attention_layers}.")
        f = self.feature_encoder(sum(self._grid(p(x)) for p, x in zip(self.feature_proj, features, strict=True)))
        a = self.attention_encoder(torch.cat([self._grid(m.float()) for m in attention], dim=1))
        f = f.flatten(2).transpose(1, 2) + self.position
        a = a.flatten(2).transpose(1, 2) + self.position
        f, a = self.fusion(f, a)
        return self.head(self.norm(torch.cat([f.mean(1), a.mean(1)], dim=1)))

    # -- files -----------------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        """``config.json`` + ``model.safetensors``, each written under a temporary name and renamed."""
        from safetensors.torch import save_file

        from ..core.dataset import atomic_write_json

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f".tmp-{WEIGHTS_FILE}"
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(tmp))
        tmp.replace(path / WEIGHTS_FILE)
        atomic_write_json(path / CONFIG_FILE, self.config.to_dict())
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> FERAnnoHead:
        from safetensors.torch import load_file

        path = resolve("annotator", path)
        cfg = path / CONFIG_FILE
        head = cls(FERAnnoConfig.from_dict(json.loads(cfg.read_text()), str(cfg)))
        head.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
        return head.eval()


def is_feranno(path: str | Path) -> bool:
    """Whether a folder (or bundled name) holds a FERAnno head rather than a classifier."""
    try:
        path = resolve("annotator", path)
    except FileNotFoundError:
        return False
    cfg = Path(path) / CONFIG_FILE
    try:
        return cfg.is_file() and json.loads(cfg.read_text()).get("format") == FORMAT
    except (OSError, json.JSONDecodeError):
        return False
