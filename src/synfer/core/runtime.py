"""Where and in what precision work runs: device resolution and mixed precision, one rule for every verb.

``precision`` is one of ``auto``, ``fp32``, ``bf16``, ``fp16``. ``auto`` is the fastest setting measured to keep
quality on the device (``benchmarks/generation_speed.py`` and ``benchmarks/fer_precision.py``):

* a CUDA GPU: bf16 where the GPU has it (Ampere and later), else fp16;
* a CPU with native bf16 arithmetic (AVX-512 BF16 or AMX): bf16 (1.6x faster generation and a 1.7x faster
  classifier training step than fp32 on a 2-core AMD EPYC, with the judge's accuracy and AU r unchanged within
  noise);
* any other CPU: fp32 (bf16 would be emulated there, slower than fp32).

Mixed precision here means autocast: weights stay fp32 and only the matrix products and convolutions run in the
low precision. What must stay fp32 stays there: losses, guidance gradients, the schedulers' arithmetic and the
classifier-free guidance combination are computed on fp32 tensors (callers cast outputs with ``.float()``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when present, else CPU. An explicit device that is missing is an error, never a silent
    fallback."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not a device torch knows ({e}); pass auto, cpu, cuda or cuda:N.") \
            from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available; pass --device cpu.")
    if d.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: synfer runs on cpu or cuda devices; pass auto, cpu, cuda or cuda:N.")
    return d


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX), so bf16 autocast pays off."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def auto_precision(device: torch.device) -> str:
    """The precision ``auto`` stands for on ``device`` (see the module docs)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision`` checked, with ``auto`` resolved for ``device``; fp16 on a CPU is refused (it is slower there
    than fp32 and loses range)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    if precision == "auto":
        return auto_precision(device)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; on a CPU use bf16 (or fp32).")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bf16; use precision fp16 (or fp32).")
    return precision


def precision_dtype(precision: str) -> torch.dtype:
    """The autocast dtype of a resolved precision (fp32 -> torch.float32: no autocast)."""
    return _DTYPES[precision]


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """``torch.autocast`` for a resolved precision on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def accelerate_mixed_precision(precision: str, device: torch.device) -> str:
    """accelerate's ``mixed_precision`` value for a precision setting on ``device`` (``no`` for fp32)."""
    resolved = resolve_precision(precision, device)
    return "no" if resolved == "fp32" else resolved


def make_accelerator(precision: str, device: torch.device | None = None, log_with: str | None = None,
                     project_dir: Path | None = None) -> Any:
    """An ``accelerate.Accelerator`` for one training run at ``precision`` (on the CPU where ``device`` is one),
    logging to the tracker ``log_with`` (None: none) under ``project_dir``.

    accelerate keeps one process-wide state fixed at the first Accelerator's mixed precision; a process that runs
    several trainings (``synfer experiment``, a notebook, the tests) may want another precision for the next one,
    so a state left by an earlier run with another setting is reset first (the process group, if any, is kept).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    device = resolve_device("auto") if device is None else device
    mixed = accelerate_mixed_precision(precision, device)
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed) != mixed:
        AcceleratorState._reset_state(reset_partial_state=False)
    # split_batches: a loader's batch is the global batch, shared out among the processes, so a run takes the same
    # optimiser steps on the same faces whatever the process count (the trainer averages the gradients)
    return Accelerator(mixed_precision=mixed, cpu=device.type == "cpu", log_with=log_with,
                       project_dir=None if project_dir is None else str(project_dir),
                       dataloader_config=DataLoaderConfiguration(split_batches=True))
