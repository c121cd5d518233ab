"""``synfer sample-grid`` and ``synfer au-sweep``: look at what a generator makes, one PNG each.

Target AUs per expression: :mod:`synfer.generator.au_targets` (``auto``: the generator's own per-class means).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..annotate.prompts import enrich_prompt
from ..core.options import SamplerOptions
from ..generator.au_targets import expression_au_targets
from ..generator.pipeline import load_generator
from ..schema import FERPLUS8, canonical_expression


def sample_grid(
    out: Path = Path("runs/sample_grid.png"),
    pipeline: str = "bundled",
    expressions: list[str] | None = None,
    per_expression: int = 8,
    au_targets: str = "auto",
    coarse: str = "",
    seed: int = 0,
    sampling: SamplerOptions = SamplerOptions(),
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
        sampling: steps, guidance scales, device and precision (plain flags work: --num-inference-steps 4).

    Returns:
        the PNG path.
    """
    from ..core.images import save_grid

    pipe, folder = load_generator(pipeline, sampling.device)
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
    images = pipe(prompts, aus=aus, **sampling.call_kwargs(),
                  generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt").images
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
    sampling: SamplerOptions = SamplerOptions(),
) -> Path:
    """One AU from 0 to 1 with everything else fixed: rows are seeds, columns the AU's value.

    The prompt is the expression's (template, no AU words), the other AUs stay at the expression's targets.

    Args:
        out: the PNG to write.
        au: the AU to sweep (``AU12`` or ``12``); one of the adapter's.
        pipeline: a SynferPipeline folder or bundled name (``bundled``: the mini FER+ model shipped with synfer).
        expression: the expression whose prompt and target AUs the other AUs keep.
        values: the AU's values, one per column (default 0, 0.2, ..., 1).
        seeds: rows; row j uses seed ``seed + j`` in every column.
        au_targets: ``auto``, ``prototype``, a prepared dataset folder or an ``au_targets.json`` (module docs).
        seed: first seed.
        sampling: steps, guidance scales, device and precision (plain flags work: --num-inference-steps 4).

    Returns:
        the PNG path.
    """
    from ..core.images import save_grid
    from ..schema import au_code

    pipe, folder = load_generator(pipeline, sampling.device)
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
    images = pipe(prompts, aus=torch.stack(aus), **sampling.call_kwargs(), generator=gens, output_type="pt").images
    path = save_grid(images, Path(out), nrow=len(values))
    print(f"wrote {path}: {col} = {values} (columns), {seeds} seeds (rows), expression {expression}")
    return path
