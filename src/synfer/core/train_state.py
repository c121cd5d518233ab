"""Resumable training state without pickles: tensors in safetensors, everything else in JSON.

A training run's resume state (model, optimizer, scheduler, EMA, RNG states, step) is kept apart from the
exported weights (``config.json`` + ``model.safetensors``). It is still loaded from a user's path, so it is no
pickle either: :func:`flatten` turns any nest of dicts / lists / tensors / plain values into one dict of tensors
plus a JSON skeleton that says where each tensor goes, and :func:`unflatten` rebuilds it.

    save_state(run_dir / "state", {"model": m.state_dict(), "optimizer": opt.state_dict(), "step": 1200, ...})
    state = load_state(run_dir / "state")
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .dataset import replace_path

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_INTKEYS = "__intkeys__"


def flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """Replace every tensor in ``obj`` by a reference and collect it in ``tensors``; returns the JSON skeleton."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if all(isinstance(k, int) for k in obj) and obj:  # optimizer state is keyed by param index
            return {_INTKEYS: {str(k): flatten(v, tensors, prefix) for k, v in obj.items()}}
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:
            raise TypeError(f"cannot store dict keys {bad[:3]} in training state (str or int keys only)")
        return {k: flatten(v, tensors, prefix) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return {_TUPLE: [flatten(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [flatten(v, tensors, prefix) for v in obj]
    if isinstance(obj, np.ndarray):
        return flatten(torch.from_numpy(obj.copy()), tensors, prefix)
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in training state")


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten`."""
    if isinstance(skeleton, dict):
        if _TENSOR in skeleton:
            return tensors[skeleton[_TENSOR]]
        if _TUPLE in skeleton:
            return tuple(unflatten(v, tensors) for v in skeleton[_TUPLE])
        if _INTKEYS in skeleton:
            return {int(k): unflatten(v, tensors) for k, v in skeleton[_INTKEYS].items()}
        return {k: unflatten(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten(v, tensors) for v in skeleton]
    return skeleton


def rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch (CPU, and the current CUDA device's) RNG states. One device's: under several
    processes each drives its own GPU from the same seed, and the main process's state is the one saved."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state()[1],  # the MT19937 key; position and the rest follow
        "numpy_rest": list(np.random.get_state()[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (after a round trip through save/load)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    key = state["numpy"].numpy() if isinstance(state["numpy"], torch.Tensor) else np.asarray(state["numpy"])
    np.random.set_state(("MT19937", key.astype(np.uint32), *state["numpy_rest"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]  # one device's state, or every device's from an older run: the first is device 0's
        torch.cuda.set_rng_state(cuda[0] if isinstance(cuda, (list, tuple)) else cuda)


#: Most bytes of tensors per file of a saved state: older safetensors releases (the project accepts 0.4 and newer)
#: copy a file's tensors into memory to write it, so shards keep that copy small next to a large model's weights
#: and optimiser moments.
SHARD_BYTES = 2**30


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to the folder ``path`` (``state.json`` + ``tensors-NNNNN.safetensors`` shards of at most
    :data:`SHARD_BYTES` each, or one larger tensor), replacing it atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, tensors)
    for i, shard in enumerate(_shards(tensors)):
        save_file(shard, str(tmp / f"tensors-{i:05d}.safetensors"))
    (tmp / "state.json").write_text(json.dumps(skeleton))
    replace_path(tmp, path)
    return path


def _shards(tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The tensors in groups of at most SHARD_BYTES; a tensor that shares memory with an earlier one or is not
    contiguous is copied (safetensors refuses both), the others are written as they are."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    seen, size = set(), 0
    for key, t in tensors.items():
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr in seen or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        elif ptr is not None:
            seen.add(ptr)
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][key], size = t, size + nbytes
    return shards


def load_state(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """Read a folder written by :func:`save_state`; a half-replaced state (killed mid-save) is recovered."""
    from safetensors.torch import load_file

    path = Path(path)
    old = path.with_name(f".old-{path.name}")
    if not path.exists() and old.exists():  # killed between the two renames: the previous state is complete
        os.replace(old, path)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path}: no training state here (state.json missing).")
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("tensors*.safetensors")):  # the shards, or one file of an older state
        tensors.update(load_file(str(file), device=map_location))
    return unflatten(json.loads((path / "state.json").read_text()), tensors)


# -- the run folder every trainer shares -------------------------------------------------------------------------
def open_run_dir(out: Path, resume: bool, overwrite: bool) -> bool:
    """Check a run folder before training: refuse to mix runs, clear it on ``overwrite``.

    Returns whether there is a finished epoch to resume (``resume`` on a folder without ``state/`` starts from
    scratch in it).
    """
    from .dataset import DatasetError, FolderLock, check_replaceable, clear_folder, mark_as_ours

    if resume and overwrite:
        raise ValueError("Pass either resume or overwrite, not both.")
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise DatasetError(f"{out} already exists; pass --resume to continue the run or --overwrite to restart.")
    if overwrite:
        check_replaceable(out)
    FolderLock(out).acquire()  # held until the training ends (Trainer.fit), or taken over once this process is gone
    if overwrite:
        clear_folder(out)
    mark_as_ours(out, "training")
    return resume and (out / "state").exists()


def check_same_options(out: Path, run_config: dict[str, Any]) -> None:
    """Refuse a resume whose options differ from those in ``out/train_config.json`` (a resume must continue the
    same run, not a different one). ``run_config`` is a provenance entry with the options under ``"config"``."""
    from .dataset import DatasetError

    previous = out / "train_config.json"
    if not previous.is_file():
        return
    before, now = json.loads(previous.read_text())["config"], run_config["config"]
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if changed:
        raise DatasetError(f"{out} was trained with other options ({', '.join(f'{k}={before.get(k)!r}' for k in changed)});"
                           " resume with the same options, or pass --overwrite to start again.")


def cached_tensors(cache: str | Path | None, key: str,
                   compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``compute()``, stored as ``cache/key.safetensors`` and read back from there next time (``cache`` None: no cache).

    ``key`` must name everything the tensors depend on (callers hash their inputs into it). The file is written
    under a temporary name and renamed, so a killed run leaves no partial entry.
    """
    from safetensors.torch import load_file, save_file

    if cache is None:
        return compute()
    path = Path(cache) / f"{key}.safetensors"
    if path.is_file():
        print(f"reused from the cache: {path}")
        return load_file(path)
    tensors = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)
    return tensors


def warmup_cosine(warm: int, total: int):
    """LambdaLR factor: linear warm-up over ``warm`` steps, then cosine decay to 0 at ``total``."""
    warm = max(1, warm)

    def factor(s: int) -> float:
        return (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))

    return factor
