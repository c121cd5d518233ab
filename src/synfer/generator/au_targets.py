"""Target AU vectors per expression that travel with a generator (``au_targets.json`` in its folder).

Target AUs per expression come from (``au_targets``):

* a prepared dataset folder: the per-class mean AU vector of its training faces (what faces of that class look
  like to the AU estimator the generator was trained with);
* ``prototype``: the EMFACS prototypes (:data:`synfer.schema.EMFACS_PROTOTYPES`);
* ``auto`` (default): the ``au_targets.json`` shipped in the pipeline folder (the bundled model has FER+'s per-class
  means), else the prototypes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from ..core.dataset import atomic_write_json
from ..schema import AUSet, check_same_order, prototype_vector

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
        if stored is not None and stored.is_file():
            au_targets = str(stored)
        else:
            warnings.warn(f"{pipeline_dir or 'this pipeline'} has no {AU_TARGETS_FILE}: target AUs 'auto' fall back "
                          "to the EMFACS prototypes, not the per-class means of real faces; pass a prepared folder "
                          "(--au_source) or store its means with synfer.generator.au_targets.write_au_targets.",
                          stacklevel=2)
            au_targets = "prototype"
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
