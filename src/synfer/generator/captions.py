"""Captions as the denoiser's text tokens during training, with the frozen text work done once per caption."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core.train_state import cached_tensors
from ..models.text_encoders import MiniLMTextEncoder, TextEncoder

#: Above this the distinct captions' frozen text states are not cached but computed every batch.
TEXT_CACHE_BYTES = 4 * 2**30


class CaptionEmbedder:
    """Captions -> UNet text tokens (B, L, D), with the frozen work done once per distinct caption.

    ``ids`` index :attr:`unique` (:attr:`empty` is ""): a MiniLM encoder with a trainable projection caches the
    backbone's states and projects each batch; a frozen encoder caches its embeddings; anything else (or a cache
    over ``TEXT_CACHE_BYTES``) encodes every batch. With ``cache`` (a folder) the frozen states are also kept on
    disk, keyed by the frozen weights and the captions, so a resumed run or an adapter run on the same captions
    skips the encoding (minutes on a CPU for FER+).
    """

    def __init__(self, encoder: TextEncoder, captions: list[str], device: torch.device, batch_size: int = 256,
                 cache: Path | None = None):
        self.encoder, self.device = encoder, device
        self.unique = sorted(set(captions) | {""})
        lookup = {c: i for i, c in enumerate(self.unique)}
        self.empty = lookup[""]
        self.ids_of = lambda caps: torch.tensor([lookup[c] for c in caps])
        trainable = bool(encoder.trainable_parameters())
        split = isinstance(encoder, MiniLMTextEncoder)
        width = encoder.hidden_size if split else encoder.output_dim
        small = len(self.unique) * encoder.max_length * width * 2 <= TEXT_CACHE_BYTES
        self.mode = ("hidden" if split else "frozen") if small and (split or not trainable) else "live"
        self.cache = None
        if self.mode != "live":
            self.cache = self._encode(batch_size) if cache is None else cached_tensors(
                cache, _text_cache_key(encoder, self.mode, self.unique), lambda: {"states": self._encode(batch_size)}
            )["states"]

    def _encode(self, batch_size: int) -> torch.Tensor:
        """The frozen states of every distinct caption (N, L, width), fp16 on the CPU."""
        import warnings

        fn = self.encoder.hidden_states if self.mode == "hidden" else self.encoder.encode
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            starts = range(0, len(self.unique), batch_size)
            states = torch.cat([fn(self.unique[i:i + batch_size], self.device).half().cpu()
                                for i in tqdm(starts, desc="encoding captions", unit="batch",
                                              disable=len(starts) < 4)])
        truncated = [w for w in caught if "truncated" in str(w.message)]
        for w in caught:  # anything else as it came
            if w not in truncated:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if truncated:  # one line for the whole caption set instead of one per chunk
            n = sum(int(str(w.message).split(" of ")[0]) for w in truncated)
            warnings.warn(f"{n} of {len(self.unique)} distinct captions are longer than the text encoder's "
                          f"{self.encoder.max_length} tokens and were truncated.", stacklevel=3)
        return states

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if self.mode == "live":
            return self.encoder.encode([self.unique[i] for i in ids.tolist()], self.device)
        states = self.cache[ids.cpu()].to(self.device).float()
        return self.encoder.projection(states) if self.mode == "hidden" else states


def _text_cache_key(encoder: TextEncoder, mode: str, captions: list[str]) -> str:
    """Hash of what cached caption states depend on: the encoder's frozen weights and settings, and the captions."""
    frozen = encoder.frozen_modules() if mode == "hidden" else [encoder]
    # settings that change the states (SDXL's zeroed "" prompt); absent keys keep older caches' keys valid
    settings = {k: encoder.config[k] for k in ("zero_empty_prompt",) if k in encoder.config}
    h = hashlib.sha256(json.dumps({"encoder": type(encoder).__name__, "mode": mode, "max_length": encoder.max_length,
                                   "vocab": getattr(getattr(encoder, "tokenizer", None), "vocab_size", None),
                                   **({"settings": settings} if settings else {}),
                                   **({"vocab_2": encoder.tokenizer_2.vocab_size}
                                      if hasattr(encoder, "tokenizer_2") else {})}, default=str).encode())
    for module in frozen:
        for name, t in sorted(module.state_dict().items()):
            h.update(name.encode() + b"\0" + t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    for c in captions:
        h.update(c.encode() + b"\0")
    return "text-" + h.hexdigest()[:24]
