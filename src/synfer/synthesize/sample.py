"""``synfer sample-grid`` and ``synfer au-sweep``: look at what a generator makes, one PNG each.

Target AUs per expression come from (``au_targets``):

* a prepared dataset folder: the per-class mean AU vector of its training faces (what faces of that class look
  like to the AU estimator the generator was trained with);
* ``prototype``: the EMFACS prototypes (:data:`synfer.schema.EMFACS_PROTOTYPES`);
* ``auto`` (default): the ``au_targets.json`` shipped in the pipeline folder (the bundled model has FER+'s per-class
  means), else the prototypes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..annotate.prompts import enrich_prompt
from ..core.dataset import atomic_write_json
from ..schema import FERPLUS8, AUSet, canonical_expression, check_same_order, prototype_vector

AU_TARGETS_FILE = "au_targets.json"


def write_au_targets(prepared: Path, pipeline_dir: Path, split: str = "train") -> Path:
    """Store a prepared folder's per-class mean AU vectors (``split`` only) as ``au_targets.json`` in a pipeline
    folder, so that sampling has realistic targets without the dataset."""
    from ..core.dataset import DatasetFolder

    folder = DatasetFolder(prepared)
    if folder.header.aus is None:
        raise ValueError(f"{prepared} has no AU values; run `synfer prepare` on it first.")
    sums: dict[str, list] = {}
    for rec in folder.records(split):
        if rec.aus is not None and rec.expression is not None:
            sums.setdefault(rec.expression, []).append(list(rec.aus))
    means = {e: [round(sum(col) / len(v), 4) for col in zip(*v, strict=True)] for e, v in sums.items()}
    path = Path(pipeline_dir) / AU_TARGETS_FILE
    atomic_write_json(path, {"au_names": list(folder.au_names), "source": f"{Path(prepared).name}:{split}",
                             "counts": {e: len(v) for e, v in sums.items()}, "per_expression": means})
    return path


def expression_au_targets(expressions: list[str], au_names: tuple[str, ...], au_targets: str = "auto",
                          pipeline_dir: Path | None = None) -> torch.Tensor:
    """(len(expressions), A) target AU vectors in ``au_names`` order (see the module docs for ``au_targets``)."""
    if au_targets == "auto":
        stored = None if pipeline_dir is None else Path(pipeline_dir) / AU_TARGETS_FILE
        au_targets = str(stored) if stored is not None and stored.is_file() else "prototype"
    if au_targets == "prototype":
        aus = AUSet(tuple(au_names))
        return torch.tensor([prototype_vector(e, aus) for e in expressions])
    source = Path(au_targets)
    if source.is_dir():
        tmp = source / AU_TARGETS_FILE
        if not tmp.is_file():  # a prepared dataset folder
            from ..core.report import au_means

            means = au_means(source)
            if means is None:
                raise ValueError(f"{source} has no AU values; give a prepared folder, 'prototype' or 'auto'.")
            table = {"au_names": list(next(iter(means.values()))),
                     "per_expression": {e: list(m.values()) for e, m in means.items()}}
        else:
            table = json.loads(tmp.read_text())
    else:
        table = json.loads(source.read_text())
    check_same_order("AU", list(au_names), table["au_names"], "the generator's AU adapter", str(source))
    missing = [e for e in expressions if e not in table["per_expression"]]
    if missing:
        raise ValueError(f"{source} has no AU targets for {missing}; it covers {list(table['per_expression'])}.")
    return torch.tensor([table["per_expression"][e] for e in expressions], dtype=torch.float32)


def load_generator(pipeline: str | None, device: str | torch.device = "cpu") -> tuple[Any, Path]:
    """The pipeline (progress bar off) on ``device`` (``auto``: CUDA when present) and its folder, where
    ``au_targets.json`` may lie."""
    from ..core.runtime import resolve_device
    from ..generator.pipeline import load_pipeline, resolve_pipeline_dir

    folder = resolve_pipeline_dir(pipeline)
    pipe = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(resolve_device(str(device))), folder


def sample_grid(
    out: Path = Path("runs/sample_grid.png"),
    pipeline: str = "bundled",
    expressions: list[str] | None = None,
    per_expression: int = 8,
    au_targets: str = "auto",
    coarse: str = "",
    seed: int = 0,
    num_inference_steps: int | None = None,
    guidance_scale_text: float | None = None,
    guidance_scale_au: float | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> Path:
    """A grid of generated faces: one row per expression, ``per_expression`` seeds per row.

    Args:
        out: the PNG to write.
        pipeline: a SynferPipeline folder or bundled name (``bundled``: the mini FER+ model shipped with synfer).
        expressions: rows (default the FER+ eight).
        per_expression: faces per row; face j of every row uses seed ``seed + j`` (columns share their noise).
        au_targets: ``auto``, ``prototype``, a prepared dataset folder or an ``au_targets.json`` (module docs).
        coarse: a coarse description of the person for the prompts ("an old man"); "" for anyone.
        seed: first seed.
        num_inference_steps, guidance_scale_text, guidance_scale_au: sampler settings (None: the pipeline's).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda:1`` ...
        precision: ``auto``, ``fp32``, ``bf16``, ``fp16`` (CUDA) (see :mod:`synfer.core.runtime`).

    Returns:
        the PNG path.
    """
    from ..core.training import save_grid

    pipe, folder = load_generator(pipeline, device)
    exprs = [canonical_expression(e) for e in (expressions or FERPLUS8.names)]
    prompts, seeds = [], []
    for e in exprs:
        for j in range(per_expression):
            prompts.append(enrich_prompt(coarse, e, None, seed=seed + j))
            seeds.append(seed + j)
    aus = None
    if pipe.au_adapter is not None:
        aus = expression_au_targets(exprs, tuple(pipe.au_adapter.au_names), au_targets, folder)
        aus = aus.repeat_interleave(per_expression, dim=0)
    images = pipe(prompts, aus=aus, num_inference_steps=num_inference_steps,
                  guidance_scale_text=guidance_scale_text, guidance_scale_au=guidance_scale_au,
                  generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt",
                  precision=precision).images
    path = save_grid(images, Path(out), nrow=per_expression)
    print(f"wrote {path}: rows {', '.join(exprs)}; {per_expression} seeds from {seed}")
    return path


def au_sweep(
    out: Path = Path("runs/au_sweep.png"),
    au: str = "AU12",
    pipeline: str = "bundled",
    expression: str = "neutral",
    values: list[float] | None = None,
    seeds: int = 4,
    au_targets: str = "auto",
    seed: int = 0,
    num_inference_steps: int | None = None,
    guidance_scale_text: float | None = None,
    guidance_scale_au: float | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> Path:
    """One AU from 0 to 1 with everything else fixed: rows are seeds, columns the AU's value.

    The prompt is the expression's (template, no AU words), the other AUs stay at the expression's targets.
    Options as in :func:`sample_grid`.
    """
    from ..core.training import save_grid
    from ..schema import au_code

    pipe, folder = load_generator(pipeline, device)
    if pipe.au_adapter is None:
        raise ValueError(f"{pipeline} has no AU adapter; an AU sweep needs one.")
    names = tuple(pipe.au_adapter.au_names)
    col = au_code(au)
    if col not in names:
        raise ValueError(f"{au} is not one of the adapter's AUs ({', '.join(names)}).")
    values = values or [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    base = expression_au_targets([canonical_expression(expression)], names, au_targets, folder)[0]
    prompts, aus, gens = [], [], []
    for s in range(seeds):
        for v in values:
            vec = base.clone()
            vec[names.index(col)] = float(v)
            prompts.append(enrich_prompt("", expression, {}, seed=seed + s))
            aus.append(vec)
            gens.append(torch.Generator().manual_seed(seed + s))
    images = pipe(prompts, aus=torch.stack(aus), num_inference_steps=num_inference_steps,
                  guidance_scale_text=guidance_scale_text, guidance_scale_au=guidance_scale_au, generator=gens,
                  output_type="pt", precision=precision).images
    path = save_grid(images, Path(out), nrow=len(values))
    print(f"wrote {path}: {col} = {values} (columns), {seeds} seeds (rows), expression {expression}")
    return path
