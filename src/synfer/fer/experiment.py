"""``synfer experiment``: the SynFER study as cached cells (does synthetic data train expression classifiers?).

A cell is one step with named inputs (options, and the keys of the cells it reads): generating a synthetic set,
voting its labels, training a classifier, scoring it. Its folder is ``WORK/cells/<name>-<key>`` where ``key`` hashes
the inputs, and ``cell.json`` (written last) marks it done with its outputs; a rerun reuses every cell whose inputs
did not change and resumes an interrupted one (generation and training are resumable). Classifiers are chosen on
the real validation split and scored once on the real test split.

Rows (one classifier recipe, fixed seeds):

* ``real``: real training faces only;
* ``syn-Nx``: synthetic only, N times the real training size (balanced over expressions), N in ``synthetic_scales``;
* ``real+syn-Nx``: both, N in ``mix_scales``;
* generator ablations at ``ablation_scale`` x: ``text`` (AU adapter off), ``aus`` (AU targets, no guidance),
  ``aus+guidance``, ``aus+guidance+voting`` (labels voted by ``annotators``), each also measured by
  ``synfer quality`` with the ``judge`` (which neither guides nor labels);
* probes: the frozen backbones of ``real`` and of the largest ``syn-Nx`` (supervised, where the paper pre-trains
  self-supervised), a linear probe and a 10-shot probe on the real faces (``synfer probe``).

``reduced`` (a flag) runs every row at the sizes in ``reduced_sizes``, for a CPU: a seeded subset of the real
training faces (at most ``real_limit`` / K per class, so rare classes keep all theirs), and the classifier options
given there (``epochs``, ``epoch_size``, ``batch_size``, ``lr`` ...: a few thousand faces need more, smaller steps than
the full recipe); synthetic sets stay N times the (reduced) real training size.

The training budget: ``epochs`` of the classifier recipe, and with ``epoch_size`` (in ``classifier`` or
``reduced_sizes``) every row sees that many faces per epoch, drawn from its folders in proportion to their sizes, so
every row takes the same number of optimiser steps (without it a row's steps grow with its data, and a 1,700-face
real row gets a few dozen steps while a 5x synthetic row gets five times more).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..dataset import DatasetFolder, atomic_write_json

CELL_FILE = "cell.json"


@dataclass
class ExperimentConfig:
    """The study's inputs (the arguments of :func:`experiment`; see configs/experiments/ferplus.yaml)."""

    real: str
    val: str
    test: str
    judge: str
    generator: str = "bundled"
    prepared: str | None = None
    annotators: list[str] = field(default_factory=list)
    classifier: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    synthetic_scales: list[float] = field(default_factory=lambda: [1.0, 2.0, 5.0])
    mix_scales: list[float] = field(default_factory=lambda: [1.0, 5.0])
    ablation_scale: float = 1.0
    guidance: dict[str, Any] = field(default_factory=lambda: {"semantic_guidance": 0.1, "guidance_window": [0.7, 0.9]})
    generation: dict[str, Any] = field(default_factory=dict)
    vote_threshold: float | None = None
    reduced_sizes: dict[str, Any] = field(default_factory=lambda: {"real_limit": 2000, "epochs": 5})
    au_sweeps: list[str] = field(default_factory=lambda: ["AU12"])


class Cells:
    """The cache: ``run(name, inputs, produce)`` returns the outputs of a done cell or produces them."""

    def __init__(self, work: Path) -> None:
        self.root = Path(work) / "cells"
        self.root.mkdir(parents=True, exist_ok=True)
        self.log: list[dict[str, Any]] = []

    @staticmethod
    def key(inputs: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def run(self, name: str, inputs: dict[str, Any], produce: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        key = self.key(inputs)
        folder = self.root / f"{name}-{key}"
        done = folder / CELL_FILE
        # a done cell with these very inputs under another name counts too (the 1x ablation "aus+guidance" trains
        # on the syn-1x set with the syn-1x recipe: one training, two rows)
        same = json.loads(json.dumps(inputs, default=str))
        for path in [done, *(p for p in sorted(self.root.glob(f"*-{key}/{CELL_FILE}")) if p != done)]:
            if path.is_file() and (cell := json.loads(path.read_text()))["inputs"] == same:
                self.log.append({"cell": name, "key": key, "cached": True, "from": cell["name"]})
                return cell["outputs"]
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        outputs = produce(folder)
        seconds = round(time.perf_counter() - t0, 1)
        atomic_write_json(done, {"name": name, "key": key, "inputs": inputs, "outputs": outputs, "seconds": seconds})
        self.log.append({"cell": name, "key": key, "cached": False, "seconds": seconds})
        return {**outputs}


def _train_size(folder: str) -> int:
    return len(DatasetFolder(folder).select_split("train"))


def _test_metrics(model: Path, test: str) -> dict[str, Any]:
    from .evaluate import evaluate

    evaluate(str(model), Path(test), split="test", out=model / "test")
    m = json.loads((model / "test" / "metrics.json").read_text())
    return {"accuracy": round(100 * m["accuracy"], 2), "macro_f1": round(100 * m["macro_f1"], 2)}


def _probe(model: str, data: str, out: Path) -> dict[str, Any]:
    from .probe import probe

    probe(model, Path(data), out=out, shots=[10])
    r = json.loads((out / "probe.json").read_text())
    return {"linear_probe": round(100 * r["linear_probe"]["accuracy"], 2),
            "10_shot": round(100 * r["few_shot"]["10"]["accuracy_mean"], 2),
            "10_shot_std": round(100 * r["few_shot"]["10"]["accuracy_std"], 2)}


def experiment(
    real: str,
    val: str,
    test: str,
    judge: str,
    generator: str = "bundled",
    prepared: str | None = None,
    annotators: list[str] | None = None,
    classifier: dict[str, Any] | None = None,
    seeds: list[int] | None = None,
    synthetic_scales: list[float] | None = None,
    mix_scales: list[float] | None = None,
    ablation_scale: float = 1.0,
    guidance: dict[str, Any] | None = None,
    generation: dict[str, Any] | None = None,
    vote_threshold: float | None = None,
    reduced_sizes: dict[str, Any] | None = None,
    au_sweeps: list[str] | None = None,
    reduced: bool = False,
    rows: list[str] | None = None,
    work: Path = Path("runs/experiment"),
) -> Path:
    """Run (or reuse) every cell of the study and write ``WORK/results.json`` and ``WORK/report.md``.

    Args:
        real: real training folder (its ``train`` split; soft labels used where present).
        val, test: folders whose ``val`` split chooses every classifier and whose ``test`` split scores it once.
        judge: classifier for the generation-quality metrics; must neither guide nor annotate.
        generator: SynferPipeline folder or bundled name.
        prepared: a prepared folder for per-class empirical AU targets (default the generator's own targets).
        annotators: FERAnno / classifier folders voting on the ``+voting`` ablation's labels (none: row skipped).
        classifier: ``train-fer`` options of the one classifier recipe (architecture, epochs, lr ...).
        seeds: classifier seeds (every row is trained once per seed).
        synthetic_scales, mix_scales: N of the synthetic-only and real + synthetic rows (N x the real size).
        ablation_scale: N of the generator-ablation rows.
        guidance: ``generate`` options of semantic guidance (scale, window, model).
        generation: other ``generate`` options for every set (batch size, steps ...).
        vote_threshold: ``label --threshold`` for the voting row.
        reduced_sizes: ``real_limit`` (real training faces, at most real_limit / K per class) and classifier
            options that replace the recipe's in the reduced run (``epochs``, ``epoch_size`` ...).
        au_sweeps: AUs swept from 0 to 1 with the generator for the report (``synfer au-sweep``, neutral face).
        reduced: run at ``reduced_sizes`` (for a CPU).
        rows: only these rows (names as in the report, e.g. ``real``, ``syn-1x``); default all.
        work: where cells, results and the report go.

    Returns:
        ``WORK/report.md``.
    """
    from ..diffusion.generate import generate
    from ..diffusion.sample import au_sweep
    from ..labeling.label import label
    from .quality import quality
    from .train import train_fer

    defaults = ExperimentConfig(real, val, test, judge)
    cfg = ExperimentConfig(
        real, val, test, judge, generator, prepared, list(annotators or []), dict(classifier or {}),
        list(seeds or defaults.seeds), list(synthetic_scales or defaults.synthetic_scales),
        list(mix_scales or defaults.mix_scales), ablation_scale, dict(guidance or defaults.guidance),
        dict(generation or {}), vote_threshold, dict(reduced_sizes or defaults.reduced_sizes),
        list(defaults.au_sweeps if au_sweeps is None else au_sweeps))
    work = Path(work)
    cells = Cells(work)
    clf_opts = dict(cfg.classifier)
    names = list(DatasetFolder(cfg.real).expressions)
    real = cfg.real
    if reduced:  # a seeded subset of the real training faces (at most real_limit / K per class), fewer epochs
        from ..dataset_ops import filter_dataset

        cap = max(1, int(cfg.reduced_sizes.get("real_limit", 2000)) // len(names))
        real = cells.run("real-subset", {"real": cfg.real, "max_per_class": cap}, lambda d: {"data": str(
            filter_dataset(Path(cfg.real), d / "data", splits=["train"], max_per_class=cap, overwrite=True))})["data"]
        # every other key is a classifier option of the reduced run (epochs, epoch_size, batch_size, lr ...)
        clf_opts.update({k: v for k, v in cfg.reduced_sizes.items() if k != "real_limit"})
    real_size = _train_size(real)

    def synthetic(variant: str, scale: float) -> dict[str, Any]:
        per_class = max(1, round(scale * real_size / len(names)))
        kw: dict[str, Any] = {"pipeline": cfg.generator, "per_class": per_class, "seed": 0, "expressions": names,
                              **cfg.generation,
                              "au_source": "none" if variant == "text" else (cfg.prepared or "auto")}
        if variant.startswith("aus+guidance"):
            kw.update(cfg.guidance)
        inputs = {"variant": variant.removesuffix("+voting"), "generate": kw}
        out = cells.run(f"generate-{inputs['variant']}-{per_class}", inputs, lambda d: {
            "data": str(generate(d / "data", **kw, preview=True, resume=(d / "data").exists()))})
        if variant.endswith("+voting"):
            vote_in = {"from": out, "annotators": cfg.annotators, "threshold": cfg.vote_threshold}
            out = cells.run(f"label-{per_class}", vote_in, lambda d: {
                "data": str(label(Path(out["data"]), d / "data", cfg.annotators, cfg.vote_threshold,
                                  resume=(d / "data").exists()))})
        return out

    def train_row(row: str, data: list[str], seed: int, counts: list[int] | None = None) -> dict[str, Any]:
        opts = {**clf_opts, "seed": seed}
        if opts.get("epoch_size") and counts is None:  # the same faces per epoch for every row, shared by size
            opts["ratios"] = [_train_size(p) for p in data]
        inputs = {"data": data, "counts": counts, "val": cfg.val, "opts": opts}
        return cells.run(f"train-{row}-s{seed}", inputs, lambda d: {
            **_test_metrics(train_fer([Path(p) for p in data], d / "model", val=Path(cfg.val), counts=counts,
                                      resume=(d / "model").exists(), **opts), cfg.test),
            "model": str(d / "model")})

    plan: list[tuple[str, Callable[[int], dict[str, Any]]]] = [("real", lambda s: train_row("real", [real], s))]
    for n in cfg.synthetic_scales:
        plan.append((f"syn-{n:g}x", lambda s, n=n: train_row(f"syn-{n:g}x", [synthetic("aus+guidance", n)["data"]],
                                                             s)))
    for n in cfg.mix_scales:
        plan.append((f"real+syn-{n:g}x", lambda s, n=n: train_row(
            f"real+syn-{n:g}x", [real, synthetic("aus+guidance", n)["data"]], s)))
    ablations = ["text", "aus", "aus+guidance"] + (["aus+guidance+voting"] if cfg.annotators else [])
    for v in ablations:
        plan.append((f"ablation-{v}", lambda s, v=v: train_row(f"ablation-{v}",
                                                               [synthetic(v, cfg.ablation_scale)["data"]], s)))
    wanted = [r for r, _ in plan] if rows is None else rows
    unknown = sorted(set(wanted) - {r for r, _ in plan})
    if unknown:
        raise ValueError(f"unknown rows {unknown}; the study's rows are {[r for r, _ in plan]}.")

    results: dict[str, Any] = {"config": asdict(cfg), "reduced": reduced, "real_train_faces": real_size,
                               "classifier": clf_opts, "rows": {}, "quality": {}, "probes": {}}
    models: dict[str, str] = {}
    for row, fn in plan:
        if row not in wanted:
            continue
        runs = [fn(s) for s in cfg.seeds]
        models[row] = runs[0]["model"]
        results["rows"][row] = {"accuracy": [r["accuracy"] for r in runs], "macro_f1": [r["macro_f1"] for r in runs],
                                "models": [r["model"] for r in runs]}
    # frozen backbones trained on real vs on the largest synthetic set: linear probe and 10-shot on real faces
    for row in ("real", f"syn-{max(cfg.synthetic_scales):g}x"):
        if row in models:
            results["probes"][row] = cells.run(f"probe-{row}", {"model": models[row], "data": cfg.test},
                                               lambda d, row=row: _probe(models[row], cfg.test, d))
    for v in ablations:
        if f"ablation-{v}" in wanted:
            data = synthetic(v, cfg.ablation_scale)["data"]
            results["quality"][v] = cells.run(f"quality-{v}", {"data": data, "judge": cfg.judge, "test": cfg.test},
                                              lambda d, data=data: quality(Path(data), Path(cfg.test), cfg.judge,
                                                                           out=d / "quality.json"))
    results["au_sweeps"] = {au: cells.run(f"au-sweep-{au}", {"pipeline": cfg.generator, "au": au}, lambda d, au=au: {
        "image": str(au_sweep(d / f"{au}.png", au=au, pipeline=cfg.generator))})["image"] for au in cfg.au_sweeps}
    results["cells"] = cells.log
    atomic_write_json(work / "results.json", results)
    from .report import write_report

    return write_report(results, work)
