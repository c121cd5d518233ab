"""The facial-action-unit (AU) adapter of SynFER (§2 of SYNFER_METHOD.md), in the style of IP-Adapter.

(One file past 400 lines on purpose: the attention processor reads its weights from the adapter at call time,
and the two are only correct together.)

An MLP maps an AU vector (B, A) in [0, 1] to N tokens (B, N, D); every cross-attention layer of a diffusers
denoiser (:mod:`synfer.models.denoiser`) gets its own key/value projections for those tokens, initialised from the
layer's own text ``to_k`` / ``to_v`` (IP-Adapter's init, Ye et al. 2023), and its output becomes::

    out = to_out(attention(q, K_text, V_text) + scale * attention(q, K_au, V_au))

The base UNet stays frozen and untouched: :meth:`AUAdapter.install` swaps in :class:`AUAttnProcessor` on the
cross-attention layers only and :meth:`AUAdapter.remove` puts the previous processor objects back. The adapter owns
every new weight; unlike diffusers' IP-Adapter processors, ours hold them *unregistered*, so while installed the
UNet's ``state_dict()`` / ``parameters()`` are unchanged (saving the UNet never saves adapter weights, and
``unet.requires_grad_(False)`` never freezes the adapter).

The AU tokens travel with the text as one ``encoder_hidden_states`` tensor, (B, L + N, D), built by
:meth:`AUAdapter.condition`; each processor splits the last N tokens off.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..schema import AUSet, check_same_order

#: Short names accepted by :meth:`AUAdapter.set_scale` for the UNet's three block groups.
BLOCK_ALIASES = {"down": "down_blocks", "mid": "mid_block", "up": "up_blocks"}
_SUFFIX = ".processor"


def layer_key(name: str) -> str:
    """ModuleDict key of a processor name: ``down_blocks.0....attn2.processor`` -> ``down_blocks__0__...__attn2``
    (ModuleDict keys may not contain dots)."""
    return name.removesuffix(_SUFFIX).replace(".", "__")


def cross_attention_layers(unet: nn.Module, cross_attention_dim: int) -> dict[str, int]:
    """The UNet's text cross-attention layers: processor name -> ``hidden_size`` (to_k / to_v output width).

    Like IP-Adapter, self-attention (``attn1``) is skipped, and so is any layer that attends to something else
    than ``cross_attention_dim``-wide tokens or has added K/V projections of its own.
    """
    layers: dict[str, int] = {}
    for name in unet.attn_processors:
        if name.endswith("attn1" + _SUFFIX):
            continue
        attn = unet.get_submodule(name.removesuffix(_SUFFIX))
        if not getattr(attn, "is_cross_attention", False) or getattr(attn, "added_kv_proj_dim", None) is not None:
            continue
        if attn.to_k.in_features != cross_attention_dim:
            continue
        if attn.to_v.out_features != attn.to_k.out_features:
            raise ValueError(f"{name}: to_k and to_v widths differ ({attn.to_k.out_features} vs "
                             f"{attn.to_v.out_features}); the AU adapter needs them equal.")
        layers[name] = attn.to_k.out_features
    return layers


class AUAttnProcessor(nn.Module):
    """Cross-attention over text tokens plus, with the same queries, over the adapter's AU tokens.

    Computes the text part exactly as diffusers' ``AttnProcessor2_0`` (spatial/group norm, ``norm_cross``, mask,
    heads, ``to_out``, residual, rescale), then adds ``scale * attention(q, to_k_au(au), to_v_au(au))`` before
    ``to_out`` (IP-Adapter's decoupled cross-attention). Where the layer's scale is 0 the AU branch is skipped,
    so the output equals the base UNet's bit for bit.

    It owns no parameters: it reads its layer's ``to_k_au`` / ``to_v_au`` and scale from the adapter at call
    time (so ``adapter.to(...)``, ``load_state_dict`` and ``set_scale`` after install all take effect).
    """

    def __init__(self, adapter: AUAdapter, name: str, previous: Any) -> None:
        super().__init__()
        # object.__setattr__: keep both out of nn.Module's registry, so the UNet's state dict never grows.
        object.__setattr__(self, "adapter", adapter)
        object.__setattr__(self, "previous", previous)
        self.name = name
        self.key = layer_key(name)

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states (B, S, C) or (B, C, H, W); encoder_hidden_states (B, L + N, D) = text then AU tokens;
        attention_mask over L (text only) or L + N keys (its last N columns mask the AU tokens)."""
        n = self.adapter.config.num_tokens
        if encoder_hidden_states is None or encoder_hidden_states.shape[1] <= n:
            got = None if encoder_hidden_states is None else tuple(encoder_hidden_states.shape)
            raise ValueError(f"{self.name}: the AU adapter is installed, so encoder_hidden_states must be text "
                             f"tokens followed by {n} AU tokens (build it with adapter.condition(text, aus)); "
                             f"got {got}.")
        text, au = encoder_hidden_states[:, :-n], encoder_hidden_states[:, -n:]
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, length = text.shape[:2]

        text_mask = au_mask = None
        if attention_mask is not None:
            if attention_mask.shape[-1] == length + n:
                text_mask, au_mask = attention_mask[..., :length], attention_mask[..., length:]
            else:
                text_mask = attention_mask
            text_mask = self._sdpa_mask(attn, text_mask, length, batch)
            au_mask = None if au_mask is None else self._sdpa_mask(attn, au_mask, n, batch)

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            # The AU tokens bypass norm_cross (as IP-Adapter's image tokens do): the adapter normalises its own.
            text = attn.norm_encoder_hidden_states(text)
        key, value = attn.to_k(text), attn.to_v(text)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (self._split_heads(x, batch, attn.heads, head_dim) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=text_mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)

        scale = self.adapter.layer_scale(self.name)
        if scale != 0.0:  # skipped, not multiplied by 0: scale 0 is then exactly the base UNet
            au_key = self._split_heads(self.adapter.to_k_au[self.key](au), batch, attn.heads, head_dim)
            au_value = self._split_heads(self.adapter.to_v_au[self.key](au), batch, attn.heads, head_dim)
            if attn.norm_k is not None:  # the AU keys live in the same space as the text keys
                au_key = attn.norm_k(au_key)
            au_out = F.scaled_dot_product_attention(query, au_key, au_value, attn_mask=au_mask, dropout_p=0.0,
                                                    is_causal=False)
            out = out + scale * au_out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)

        out = attn.to_out[1](attn.to_out[0](out))  # linear, dropout
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    @staticmethod
    def _split_heads(x: torch.Tensor, batch: int, heads: int, head_dim: int) -> torch.Tensor:
        """(B, S, heads * head_dim) -> (B, heads, S, head_dim)."""
        return x.view(batch, -1, heads, head_dim).transpose(1, 2)

    @staticmethod
    def _sdpa_mask(attn: nn.Module, mask: torch.Tensor, length: int, batch: int) -> torch.Tensor:
        """A diffusers mask/bias over ``length`` keys -> SDPA's (B, heads, queries or 1, length)."""
        mask = attn.prepare_attention_mask(mask, length, batch)
        return mask.view(batch, attn.heads, -1, mask.shape[-1])

    def extra_repr(self) -> str:
        return f"layer={self.name!r}, previous={type(self.previous).__name__}"


class AUAdapter(ModelMixin, ConfigMixin):
    """AU vector -> N tokens, plus per-cross-attention-layer AU key/value projections.

    Saves as ``config.json`` + ``diffusion_pytorch_model.safetensors`` (diffusers' ``save_pretrained`` /
    ``from_pretrained``; pickles are never written or read) and is rebuilt from its config alone.

    Args:
        au_names: AU column names in vector order ("AU01", "AU12", ...): the order is data, checked on use.
        num_tokens: N, AU tokens per sample (IP-Adapter uses 4 image tokens).
        cross_attention_dim: D, width of the denoiser's text tokens (the AU tokens join them before the denoiser).
        attention_dim: width of the tokens its cross-attention layers attend to, where the denoiser projects its
            text tokens first (a diffusion transformer's caption projection); None: D (a UNet).
        hidden_dim: width of the MLP's hidden layer.
        layers: per cross-attention processor name, ``{"hidden_size": to_k/to_v output width}``
            (:meth:`for_unet` fills it from a UNet).
        au_mean, au_std: per-AU statistics (A values each) that standardise the AU vector before the MLP,
            ``(aus - au_mean) / au_std``, or None (default) for the raw [0, 1] vector. Rarely active AUs have
            a small spread (std 0.04 for AU22 in FER+ against 0.3 for AU01): standardised, each AU reaches the
            MLP with the same weight (see :meth:`with_standardized_inputs`).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, au_names: Sequence[str], cross_attention_dim: int, layers: Mapping[str, Mapping[str, int]],
                 num_tokens: int = 4, hidden_dim: int = 256, au_mean: Sequence[float] | None = None,
                 au_std: Sequence[float] | None = None, attention_dim: int | None = None) -> None:
        super().__init__()
        self.au_set = AUSet(tuple(au_names))  # canonical, unique names, or a ValueError saying how to write them
        if num_tokens < 1 or hidden_dim < 1 or cross_attention_dim < 1:
            raise ValueError(f"num_tokens, hidden_dim, cross_attention_dim must be >= 1; got {num_tokens}, "
                             f"{hidden_dim}, {cross_attention_dim}.")
        if (au_mean is None) != (au_std is None):
            raise ValueError("Give au_mean and au_std together (or neither).")
        if au_mean is not None:
            if len(au_mean) != len(au_names) or len(au_std) != len(au_names):
                raise ValueError(f"au_mean and au_std need one value per AU ({len(au_names)}); got {len(au_mean)} "
                                 f"and {len(au_std)}.")
            if not all(math.isfinite(m) for m in au_mean) or not all(math.isfinite(v) and v > 0 for v in au_std):
                raise ValueError(f"au_mean must be finite and au_std finite and > 0; got {list(au_mean)}, "
                                 f"{list(au_std)}.")
        # buffers (not saved: the config holds them) so that .to(device) moves them with the weights
        self.register_buffer("_au_mean", None if au_mean is None else torch.tensor(list(au_mean)), persistent=False)
        self.register_buffer("_au_std", None if au_std is None else torch.tensor(list(au_std)), persistent=False)
        if not layers:
            raise ValueError("layers is empty; build the adapter with AUAdapter.for_unet(unet, au_names).")
        d = cross_attention_dim
        self.proj = nn.Sequential(nn.Linear(len(au_names), hidden_dim), nn.GELU(),
                                  nn.Linear(hidden_dim, num_tokens * d))
        self.norm = nn.LayerNorm(d)
        # Zero null tokens give zero AU keys/values, so a dropped AU vector adds exactly nothing at init; training
        # with AU dropout learns what "no AU condition" means (classifier-free guidance on AUs, SynFER §2).
        self.null_tokens = nn.Parameter(torch.zeros(num_tokens, d))
        a = attention_dim or d
        self.to_k_au = nn.ModuleDict({layer_key(n): nn.Linear(a, int(v["hidden_size"]), bias=False)
                                      for n, v in layers.items()})
        self.to_v_au = nn.ModuleDict({layer_key(n): nn.Linear(a, int(v["hidden_size"]), bias=False)
                                      for n, v in layers.items()})
        self._scales: dict[str, float] = dict.fromkeys(layers, 1.0)

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def for_unet(cls, unet: nn.Module, au_names: Sequence[str], num_tokens: int = 4, hidden_dim: int = 256,
                 cross_attention_dim: int | None = None) -> AUAdapter:
        """An adapter matching ``unet``'s cross-attention layers, AU k/v initialised from their text k/v.

        Built on the CPU in float32 (trainable weights stay fp32 under mixed precision); move it with ``.to``.
        ``cross_attention_dim`` defaults to the denoiser's text width (:mod:`synfer.models.denoiser`; give it where
        a UNet's is per-block). Any denoiser family works: a UNet, or a diffusion transformer whose attention
        layers see projected text tokens (the AU tokens join the text before that projection).
        """
        from .denoiser import family_of

        family = family_of(unet)
        d = cross_attention_dim if cross_attention_dim is not None else family.text_width(unet)
        a = cross_attention_dim if cross_attention_dim is not None else family.token_width(unet)
        if not isinstance(d, int):
            raise ValueError(f"unet.config.cross_attention_dim is {d!r}; pass cross_attention_dim=<int> to pick "
                             "the text width whose layers get AU key/values.")
        layers = cross_attention_layers(unet, a)
        if not layers:
            raise ValueError(f"{type(unet).__name__} has no cross-attention layer over {a}-wide tokens.")
        adapter = cls(au_names=list(au_names), cross_attention_dim=d, num_tokens=num_tokens, hidden_dim=hidden_dim,
                      layers={n: {"hidden_size": h} for n, h in layers.items()},
                      attention_dim=None if a == d else a)
        adapter.init_from_unet(unet)
        return adapter

    @torch.no_grad()
    def init_from_unet(self, unet: nn.Module) -> None:
        """Copy each layer's text ``to_k`` / ``to_v`` weights into its ``to_k_au`` / ``to_v_au`` (IP-Adapter init:
        the AU tokens start out read like text tokens, so training begins from a sensible attention)."""
        self._check_layers(unet)
        for name in self.config.layers:
            attn = unet.get_submodule(name.removesuffix(_SUFFIX))
            self.to_k_au[layer_key(name)].weight.copy_(attn.to_k.weight)
            self.to_v_au[layer_key(name)].weight.copy_(attn.to_v.weight)

    @torch.no_grad()
    def with_standardized_inputs(self, au_mean: Sequence[float], au_std: Sequence[float]) -> AUAdapter:
        """A copy that standardises its AU input with these statistics and computes the same tokens as this one.

        The first linear layer is refolded so that ``W' z + b' = W x + b`` for ``z = (x - mean) / std``, where
        ``x`` is what this adapter feeds that layer (``W' = W diag(std_new / std_old)``, ``b'`` to match): the
        function is unchanged, only the parametrisation, so that further training moves every AU's input weights
        at a comparable rate whatever the AU's spread (Adam's steps are about equal per weight).
        """
        old_mean = self._au_mean if self._au_mean is not None else torch.zeros(len(self.au_names))
        old_std = self._au_std if self._au_std is not None else torch.ones(len(self.au_names))
        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        new = type(self)(**{**config, "au_mean": [float(v) for v in au_mean], "au_std": [float(v) for v in au_std]})
        new.load_state_dict(self.state_dict())
        new._scales = dict(self._scales)
        lin = new.proj[0]
        mean_new, std_new = new._au_mean.to(lin.weight), new._au_std.to(lin.weight)
        old_mean, old_std = old_mean.to(lin.weight), old_std.to(lin.weight)
        # x_old = (x - m_old) / s_old = (z * s_new + m_new - m_old) / s_old
        w = lin.weight * (std_new / old_std)
        lin.bias.add_(lin.weight @ ((mean_new - old_mean) / old_std))
        lin.weight.copy_(w)
        return new.to(self.null_tokens.device)

    # -- AU tokens ------------------------------------------------------------------------------------------------
    @property
    def au_names(self) -> tuple[str, ...]:
        return self.au_set.names

    def check_aus(self, names: Sequence[str], source: str) -> None:
        """Refuse AU vectors whose column order (from ``source``, e.g. a dataset path) differs from the adapter's."""
        check_same_order("AU", self.au_names, list(names), "AU adapter", source)

    def encode(self, aus: torch.Tensor | None, drop_mask: torch.Tensor | None = None,
               batch_size: int | None = None) -> torch.Tensor:
        """AU vectors (B, A) in [0, 1] -> tokens (B, N, D).

        Args:
            aus: (B, A) in the adapter's AU order, or None: the null tokens for the whole batch.
            drop_mask: (B,) bool; True rows get the learned null tokens (AU dropout in training, the unconditional
                branch of classifier-free guidance on AUs).
            batch_size: B where ``aus`` is None (default: ``len(drop_mask)``, else 1).
        """
        n, d = self.config.num_tokens, self.config.cross_attention_dim
        if aus is None:
            b = batch_size if batch_size is not None else (len(drop_mask) if drop_mask is not None else 1)
            return self.null_tokens.unsqueeze(0).expand(b, n, d)
        if aus.ndim != 2 or aus.shape[1] != len(self.au_names):
            raise ValueError(f"AU vectors must be (batch, {len(self.au_names)}) in the order {list(self.au_names)}; "
                             f"got shape {tuple(aus.shape)} ({aus.shape[-1] if aus.ndim else 0} values per row, "
                             f"expected {len(self.au_names)}).")
        x = aus.to(self.null_tokens.dtype)
        if self._au_mean is not None:
            x = (x - self._au_mean.to(x.dtype)) / self._au_std.to(x.dtype)
        tokens = self.norm(self.proj(x).view(aus.shape[0], n, d))
        if drop_mask is not None:
            if drop_mask.shape != (aus.shape[0],):
                raise ValueError(f"drop_mask must be ({aus.shape[0]},) bool; got {tuple(drop_mask.shape)}.")
            tokens = torch.where(drop_mask.to(tokens.device, torch.bool)[:, None, None], self.null_tokens, tokens)
        return tokens

    def condition(self, text_embeds: torch.Tensor, aus: torch.Tensor | None,
                  drop_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet's ``encoder_hidden_states`` while installed: text (B, L, D) then AU tokens -> (B, L + N, D)."""
        if text_embeds.ndim != 3 or text_embeds.shape[-1] != self.config.cross_attention_dim:
            raise ValueError(f"text_embeds must be (batch, tokens, {self.config.cross_attention_dim}); got "
                             f"{tuple(text_embeds.shape)}.")
        if aus is not None and aus.shape[0] != text_embeds.shape[0]:
            raise ValueError(f"{aus.shape[0]} AU vectors for {text_embeds.shape[0]} text embeddings; give one per "
                             "sample (repeat them for classifier-free guidance batches).")
        tokens = self.encode(aus, drop_mask, batch_size=text_embeds.shape[0])
        return torch.cat([text_embeds, tokens.to(text_embeds.dtype)], dim=1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The adapter's own parameters (MLP, norm, null tokens, every AU k/v), never the UNet's."""
        return list(self.parameters())

    # -- scale ----------------------------------------------------------------------------------------------------
    def valid_scale_prefixes(self) -> list[str]:
        """"down" / "mid" / "up" and every dotted prefix of a layer name ("up_blocks.1", ...)."""
        prefixes = set(BLOCK_ALIASES)
        for name in self.config.layers:
            parts = name.split(".")
            prefixes.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        return sorted(prefixes, key=lambda p: (p.count("."), p))

    def set_scale(self, scale: float | Mapping[str, float]) -> None:
        """Weight of the AU attention: one float for every layer, or ``{block prefix: float}``.

        With a dict the longest matching prefix wins ("up_blocks.1" over "up"); layers no key matches get 1.0,
        so the result never depends on earlier calls. Scale 0 skips a layer's AU branch (base output exactly).
        """
        if not isinstance(scale, Mapping):
            self._scales = dict.fromkeys(self.config.layers, self._check_scale(scale, "scale"))
            return
        valid = self.valid_scale_prefixes()
        unknown = [k for k in scale if k not in valid]
        if unknown:
            short = [p for p in valid if p.count(".") <= 1]
            raise ValueError(f"Unknown scale prefix(es) {unknown}; valid: {short} or any longer dotted prefix of a "
                             f"layer name (e.g. {next(iter(self.config.layers))!r}).")
        rules = sorted(((BLOCK_ALIASES.get(k, k), self._check_scale(v, k)) for k, v in scale.items()),
                       key=lambda r: len(r[0]), reverse=True)
        self._scales = {n: next((v for p, v in rules if n == p or n.startswith(p + ".")), 1.0)
                        for n in self.config.layers}

    @staticmethod
    def _check_scale(value: float, where: str) -> float:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"AU scale for {where!r} must be finite; got {value}.")
        return value

    @contextmanager
    def scaled(self, scale: float) -> Iterator[None]:
        """Every layer at ``scale`` inside the block (1.0 leaves the current scales), the scales before after it."""
        if float(scale) == 1.0:
            yield
            return
        before = dict(self._scales)
        self.set_scale(scale)
        try:
            yield
        finally:
            self._scales = before

    def layer_scale(self, name: str) -> float:
        """Current scale of one layer (by processor name)."""
        return self._scales[name]

    # -- install / remove -----------------------------------------------------------------------------------------
    def _check_layers(self, unet: nn.Module) -> None:
        if getattr(unet, "encoder_hid_proj", None) is not None:
            raise ValueError("This UNet projects encoder_hidden_states (encoder_hid_proj) before its blocks, which "
                             "would mangle the AU tokens; the AU adapter supports UNets without encoder_hid_dim.")
        found = cross_attention_layers(unet, self.config.get("attention_dim") or self.config.cross_attention_dim)
        want = {n: int(v["hidden_size"]) for n, v in self.config.layers.items()}
        if found != want:
            missing = sorted(set(want) - set(found))
            extra = sorted(set(found) - set(want))
            wrong = {n: (want[n], found[n]) for n in set(want) & set(found) if want[n] != found[n]}
            raise ValueError(f"This adapter was built for another UNet: layers missing in the UNet {missing}, "
                             f"unknown to the adapter {extra}, hidden_size (adapter, UNet) differs {wrong}. "
                             "Build one for this UNet with AUAdapter.for_unet(unet, au_names).")

    def installed_on(self, unet: nn.Module) -> bool:
        """True while this adapter's processors sit in ``unet``."""
        return any(isinstance(p, AUAttnProcessor) and p.adapter is self for p in unet.attn_processors.values())

    def install(self, unet: nn.Module) -> None:
        """Swap :class:`AUAttnProcessor` into ``unet``'s cross-attention layers, remembering the processors there.

        From now on the UNet expects ``encoder_hidden_states = adapter.condition(text, aus)``.
        """
        processors = unet.attn_processors
        if any(isinstance(p, AUAttnProcessor) for p in processors.values()):
            which = "this adapter" if self.installed_on(unet) else "another AU adapter"
            raise ValueError(f"{which} is already installed on this UNet; call .remove(unet) first.")
        self._check_layers(unet)
        for name in self.config.layers:
            processors[name] = AUAttnProcessor(self, name, previous=processors[name])
        unet.set_attn_processor(processors)

    def remove(self, unet: nn.Module) -> None:
        """Put back the exact processor objects :meth:`install` replaced."""
        processors = unet.attn_processors
        ours = [n for n, p in processors.items() if isinstance(p, AUAttnProcessor) and p.adapter is self]
        if not ours:
            raise ValueError("This AU adapter is not installed on this UNet; nothing to remove.")
        for name in ours:
            processors[name] = processors[name].previous
        unet.set_attn_processor(processors)

    @contextmanager
    def applied_to(self, unet: nn.Module) -> Iterator[AUAdapter]:
        """``with adapter.applied_to(unet): ...``: installed inside the block, removed after (even on error)."""
        self.install(unet)
        try:
            yield self
        finally:
            self.remove(unet)

    # -- files ----------------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """``config.json`` + ``diffusion_pytorch_model.safetensors`` (safetensors only: no pickles)."""
        if kwargs.get("safe_serialization", True) is not True:
            raise ValueError("AUAdapter saves safetensors only; drop safe_serialization=False.")
        super().save_pretrained(save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, **kwargs: Any) -> AUAdapter:
        """Load a saved adapter folder (safetensors only: a folder holding only .bin/.pt weights is refused)."""
        if kwargs.get("use_safetensors") is False:  # None (diffusers' default) reads safetensors here too
            raise ValueError("AUAdapter loads safetensors only; drop use_safetensors=False.")
        kwargs["use_safetensors"] = True
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
