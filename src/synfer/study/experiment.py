"""``synfer experiment``: the SynFER study as cached cells (does synthetic data train expression classifiers?).

Every step is a cell of :mod:`synfer.study.cells` (cached, resumable, optionally recorded for another machine).
One classifier recipe (``classifier``) trains every row; each row's model is chosen on the real validation split
and scored once on the real test split, whose per-face predictions are kept.

Rows:

* ``real``: real training faces only, at every seed of ``seeds``;
* ``real-control``: real only, trained for the optimiser steps of ``real+syn-Nx`` (the smallest N): its epochs
  times (real + synthetic) / real. A gain the mixed row shares with this row comes from the steps, not the faces;
* ``syn-Nx``: synthetic only, N x the real training size, the full pipeline (per-face AU targets drawn from real
  faces of the class, semantic guidance, labels voted by ``annotators``); N in ``synthetic_scales``;
* ``real+syn-Nx``: both, N in ``mix_scales``, at every seed;
* generator ablations at ``ablation_scale`` x: ``text`` (no AU condition), ``aus`` (per-face AU targets),
  ``aus-class-mean`` (the generator's per-class mean AU targets), ``aus+guidance``, ``aus+guidance+voting`` (the
  ``syn`` rows' set), each trained and judged by ``synfer quality`` (the ``judge`` neither guides nor votes)
  with the privacy audit against the generator's training faces (``privacy_train``);
* probes: the frozen backbones of ``real`` and of the ``syn`` rows, a linear probe and a 10-shot probe on real faces.

Synthetic sets follow the real training split's class distribution (``class_counts: real``) or are balanced
(``balanced``). A set of N x is N chunks of up to 1x each, chunk j generated with seed j (and voted on its own), so
the 2x set contains the 1x one. ``results.json`` holds per row: test accuracy, macro-F1, per-class recall and
predictions per seed, and the paired-bootstrap 95% interval of its difference to ``real`` (first-seed models, the
same test faces; for rows trained at several seeds also per seed and of their mean, :func:`compare_to_real`); per
set: quality and privacy; the probes. The report (``report.md``, ``report.html``) is built from it.

``reduced`` (a flag) runs every row on a seeded subset of the real training faces (at most ``real_limit`` / K per
class) with the classifier options in ``reduced_sizes``: the smoke mode, minutes on a CPU.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.dataset import DatasetFolder, atomic_write_json
from ..core.options import bind
from .cells import CellMissing, Cells

#: The generator ablations in order: each adds one thing to the previous one.
ABLATIONS = ("text", "aus", "aus-class-mean", "aus+guidance", "aus+guidance+voting")
#: The synthetic rows' full pipeline.
FULL = "aus+guidance+voting"


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
    synthetic_scales: list[float] = field(default_factory=lambda: [1.0, 2.0])
    mix_scales: list[float] = field(default_factory=lambda: [1.0])
    ablation_scale: float = 1.0
    class_counts: str = "real"
    control: bool = True
    guidance: dict[str, Any] = field(default_factory=lambda: {"semantic_guidance": 0.1, "guidance_window": [0.6, 0.9]})
    generation: dict[str, Any] = field(default_factory=dict)
    vote_threshold: float | None = None
    privacy_train: str | None = None
    reduced_sizes: dict[str, Any] = field(default_factory=lambda: {"real_limit": 2000, "epochs": 5})
    au_sweeps: list[str] = field(default_factory=lambda: ["AU12"])


class Study:
    """The study's cells for one configuration: synthetic sets, trained rows, quality, probes."""

    def __init__(self, cfg: ExperimentConfig, cells: Cells, real: str, clf_opts: dict[str, Any]) -> None:
        self.cfg, self.cells, self.real, self.clf_opts = cfg, cells, real, clf_opts
        folder = DatasetFolder(real)
        self.names = list(folder.expressions)
        labels = [e for e in folder.select_split("train").column("expression").to_pylist() if e is not None]
        self.real_counts = {n: labels.count(n) for n in self.names}
        self.real_size = len(folder.select_split("train"))
        self._test = None

    # -- synthetic sets --------------------------------------------------------------------------------------
    def chunk_counts(self, fraction: float) -> dict[str, int]:
        """Faces per class of a chunk of ``fraction`` x the real training size."""
        if self.cfg.class_counts == "real":
            return {n: max(1, round(fraction * c)) if c else 0 for n, c in self.real_counts.items()}
        if self.cfg.class_counts == "balanced":
            return {n: max(1, round(fraction * self.real_size / len(self.names))) for n in self.names}
        raise ValueError(f"class_counts must be 'real' or 'balanced'; got {self.cfg.class_counts!r}.")

    def chunk(self, variant: str, j: int, fraction: float, files: bool = False) -> str:
        """Chunk ``j`` (seed j) of the ``variant`` set: its dataset folder (voted for ``+voting``)."""
        from ..labeling.label import label
        from ..synthesize.generate import generate

        base = variant.removesuffix("+voting")
        au_source = {"text": "none", "aus-class-mean": "auto"}.get(base, self.cfg.prepared or "auto")
        kw: dict[str, Any] = {"pipeline": self.cfg.generator, "counts": self.chunk_counts(fraction), "seed": j,
                              "expressions": self.names, **self.cfg.generation, "au_source": au_source}
        if base == "aus+guidance":
            kw.update(self.cfg.guidance)
        inputs = {"variant": base, "generate": kw}

        def generated(need: bool) -> dict[str, Any]:
            return self.cells.run(f"generate-{base}-c{j}", inputs, lambda d: {"data": str(generate(
                d / "data", **bind(generate, {**kw, "preview": True, "resume": (d / "data").exists()})))},
                files=need)

        if not variant.endswith("+voting"):
            return generated(files)["data"]
        out = generated(False)
        vote_in = {"from": out, "annotators": self.cfg.annotators, "threshold": self.cfg.vote_threshold}
        voted = self.cells.lookup(f"label-{base}-c{j}", vote_in)
        if voted is None or (files and not self.cells.has_files(voted)):
            generated(True)  # the vote reads the generated faces
        return self.cells.run(f"label-{base}-c{j}", vote_in, lambda d: {"data": str(label(
            Path(out["data"]), d / "data", self.cfg.annotators, self.cfg.vote_threshold,
            resume=(d / "data").exists()))}, files=files)["data"]

    def synthetic(self, variant: str, scale: float, files: bool = False) -> list[str]:
        """The folders of the ``variant`` set at ``scale`` x: chunks of up to 1x, seeds 0, 1, ..."""
        whole, rest = int(scale), scale - int(scale)
        fractions = [1.0] * whole + ([rest] if rest > 1e-9 else [])
        return [self.chunk(variant, j, f, files) for j, f in enumerate(fractions)]

    # -- trained rows ----------------------------------------------------------------------------------------
    def test_split(self) -> Any:
        from ..core.splits import load_split

        if self._test is None:
            self._test = load_split(self.cfg.test, "test", expressions=self.names)
        return self._test

    def train(self, row: str, data: Callable[[bool], list[str]], seed: int, epochs_factor: float = 1.0,
              files: bool = False) -> dict[str, Any]:
        """Row ``row`` trained at ``seed`` on ``data(files_needed)``: test metrics, predictions, model folder."""
        from ..classifiers.train import train_fer
        from .stats import score_on_split

        opts = {**self.clf_opts, "seed": seed}
        if epochs_factor != 1.0:
            opts["epochs"] = max(1, round(opts.get("epochs", 30) * epochs_factor))
        inputs = {"data": data(False), "counts": None, "val": self.cfg.val, "opts": opts}

        def produce(d: Path) -> dict[str, Any]:
            recipe = {**opts, "val": Path(self.cfg.val), "resume": (d / "model").exists()}
            model = train_fer([Path(p) for p in data(True)], d / "model", **bind(train_fer, recipe))
            return {**score_on_split(model, self.test_split()), **_training_cost(model), "model": str(model)}

        return self.cells.run(f"train-{row}-s{seed}", inputs, produce, files=files)


def _training_cost(model: Path) -> dict[str, Any]:
    """The best validation accuracy and the median training speed of a ``train-fer`` run folder."""
    rows = [json.loads(x) for x in (Path(model) / "metrics.jsonl").read_text().splitlines() if x]
    return {"val_accuracy": round(100 * max(r["val_accuracy"] for r in rows), 2),
            "images_per_s": round(float(np.median([r["images_per_s"] for r in rows])), 1),
            "train_seconds": round(sum(r["epoch_s"] for r in rows), 1)}


def plan_rows(study: Study) -> list[tuple[str, list[int], Callable[[int, bool], dict[str, Any]]]]:
    """(row, seeds, train(seed, files)) for every row of the study, in report order."""
    cfg, real = study.cfg, study.real
    seeds, first = cfg.seeds, cfg.seeds[:1]
    rows: list[tuple[str, list[int], Callable[[int, bool], dict[str, Any]]]] = [
        ("real", seeds, lambda s, f: study.train("real", lambda _: [real], s, files=f))]
    if cfg.control and cfg.mix_scales:
        factor = 1 + min(cfg.mix_scales)  # a mixed row's epoch holds its real and its synthetic faces
        rows.append(("real-control", first,
                     lambda s, f: study.train("real-control", lambda _: [real], s, factor, files=f)))
    for n in cfg.synthetic_scales:
        rows.append((f"syn-{n:g}x", first, lambda s, f, n=n: study.train(
            f"syn-{n:g}x", lambda need, n=n: study.synthetic(FULL, n, need), s, files=f)))
    for n in cfg.mix_scales:
        rows.append((f"real+syn-{n:g}x", seeds, lambda s, f, n=n: study.train(
            f"real+syn-{n:g}x", lambda need, n=n: [real, *study.synthetic(FULL, n, need)], s, files=f)))
    variants = [v for v in ABLATIONS if v != FULL or cfg.annotators]
    for v in variants:
        rows.append((f"ablation-{v}", first, lambda s, f, v=v: study.train(
            f"ablation-{v}", lambda need, v=v: study.synthetic(v, cfg.ablation_scale, need), s, files=f)))
    return rows


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
    class_counts: str = "real",
    control: bool = True,
    guidance: dict[str, Any] | None = None,
    generation: dict[str, Any] | None = None,
    vote_threshold: float | None = None,
    privacy_train: str | None = None,
    reduced_sizes: dict[str, Any] | None = None,
    au_sweeps: list[str] | None = None,
    reduced: bool = False,
    rows: list[str] | None = None,
    work: Path = Path("runs/experiment"),
    record: Path | None = None,
    recorded_only: bool = False,
) -> Path:
    """Run (or reuse) every cell of the study and write ``WORK/results.json`` and ``WORK/report.md``.

    Args:
        real: real training folder (its ``train`` split; soft labels used where present).
        val, test: folders whose ``val`` split chooses every classifier and whose ``test`` split scores it once.
        judge: classifier for the generation-quality metrics; must neither guide nor annotate.
        generator: SynferPipeline folder or bundled name.
        prepared: a prepared folder whose real faces' AUs are the per-face AU targets (default the generator's).
        annotators: FERAnno / classifier folders voting on the synthetic rows' labels (none: no voting row).
        classifier: ``train-fer`` options of the one classifier recipe (architecture, epochs, lr ...).
        seeds: classifier seeds of ``real`` and ``real+syn`` rows (the other rows train at the first).
        synthetic_scales, mix_scales: N of the synthetic-only and real + synthetic rows (N x the real size).
        ablation_scale: N of the generator-ablation rows.
        class_counts: ``real`` (the real training split's class distribution) or ``balanced``.
        control: train the ``real-control`` row (real at the mixed row's optimiser steps).
        guidance: ``generate`` options of semantic guidance (scale, window, model).
        generation: other ``generate`` options for every set (batch size, precision ...).
        vote_threshold: ``label --threshold`` for the voted sets.
        privacy_train: the generator's training faces (a dataset folder, ``train`` split) for the privacy audit of
            every set (default: ``prepared``, else ``real``).
        reduced_sizes: ``real_limit`` (real training faces, at most real_limit / K per class) and classifier
            options that replace the recipe's in the reduced run (``epochs``, ``batch_size`` ...).
        au_sweeps: AUs swept from 0 to 1 with the generator for the report (``synfer au-sweep``, neutral face).
        reduced: run at ``reduced_sizes`` (the smoke mode).
        rows: only these rows (names as in the report, e.g. ``real``, ``syn-1x``); default all.
        work: where cells, results and the report go.
        record: a folder for a copy of every finished cell (see :mod:`synfer.study.cells`).
        recorded_only: compute nothing: the results and the report of the cells done in ``work`` or recorded in
            ``record`` (a row, set or probe with a missing cell is left out and listed under ``missing``).

    Returns:
        ``WORK/report.md``.
    """
    cfg = ExperimentConfig(
        real, val, test, judge, generator, prepared, list(annotators or []), dict(classifier or {}),
        list(seeds or [0]), list(synthetic_scales or [1.0, 2.0]), list(mix_scales or [1.0]), ablation_scale,
        class_counts, control, dict(guidance or ExperimentConfig(real, val, test, judge).guidance),
        dict(generation or {}), vote_threshold, privacy_train or prepared or real,
        dict(reduced_sizes or {"real_limit": 2000, "epochs": 5}), list(["AU12"] if au_sweeps is None else au_sweeps))
    cells = Cells(Path(work), record, compute=not recorded_only)
    clf_opts, real_path = dict(cfg.classifier), cfg.real
    if reduced:  # a seeded subset of the real training faces (at most real_limit / K per class), fewer epochs
        from ..core.ops import filter_dataset

        k = len(DatasetFolder(cfg.real).expressions)
        cap = max(1, int(cfg.reduced_sizes.get("real_limit", 2000)) // k)
        # a filter of seconds, made even for a report of recorded cells
        subset = cells if cells.compute else Cells(Path(work), record)
        real_path = subset.run("real-subset", {"real": cfg.real, "max_per_class": cap}, lambda d: {"data": str(
            filter_dataset(Path(cfg.real), d / "data", splits=["train"], max_per_class=cap, overwrite=True))},
            files=True)["data"]
        clf_opts.update({k: v for k, v in cfg.reduced_sizes.items() if k != "real_limit"})
    study = Study(cfg, cells, real_path, clf_opts)
    plan = plan_rows(study)
    wanted = [r for r, _, _ in plan] if rows is None else rows
    unknown = sorted(set(wanted) - {r for r, _, _ in plan})
    if unknown:
        raise ValueError(f"unknown rows {unknown}; the study's rows are {[r for r, _, _ in plan]}.")
    results = run_rows(study, plan, wanted)
    results.update({"config": asdict(cfg), "reduced": reduced, "real_train_faces": study.real_size,
                    "real_class_counts": study.real_counts, "classifier": clf_opts})
    try:
        results["au_sweeps"] = au_sweep_cells(cells, cfg)
    except CellMissing as e:
        results["au_sweeps"] = {}
        _missing(results, "au-sweeps", e)
    results["cells"] = cells.log
    atomic_write_json(Path(work) / "results.json", results)
    from .report import write_report

    return write_report(results, Path(work))


def run_rows(study: Study, plan: list, wanted: list[str]) -> dict[str, Any]:
    """Train and score the wanted rows, judge their sets, probe the backbones; the results dict."""
    from .quality import quality

    cfg, cells = study.cfg, study.cells
    out: dict[str, Any] = {"rows": {}, "quality": {}, "probes": {}, "missing": []}
    trained: dict[str, Callable[[bool], dict[str, Any]]] = {}
    for row, seeds, fn in plan:
        if row not in wanted:
            continue
        runs, done = [], []
        for s in seeds:  # a report of what is done (cells not computed) keeps a row's first seeds that are done
            try:
                runs.append(fn(s, False))
                done.append(s)
            except CellMissing as e:
                _missing(out, row if not done else f"{row} seed {s}", e)
                break
        if not runs:
            continue
        seeds = done
        trained[row] = lambda files, fn=fn, s=seeds[0]: fn(s, files)
        out["rows"][row] = {"seeds": seeds, **{k: [r[k] for r in runs] for k in (
            "accuracy", "macro_f1", "per_class_recall", "val_accuracy", "images_per_s", "train_seconds", "model")},
            "predictions": runs[0]["predictions"]}
        if len(runs) > 1:
            out["rows"][row]["predictions_by_seed"] = [r["predictions"] for r in runs]
    labels = study.test_split().labels.numpy()
    compare_to_real(out["rows"], labels)
    out["test_labels"] = [int(x) for x in labels]
    sets = {f"ablation-{v}": (v, cfg.ablation_scale) for v in ABLATIONS}
    sets.update({f"syn-{n:g}x": (FULL, n) for n in cfg.synthetic_scales})
    for row, (variant, scale) in sets.items():
        if row not in out["rows"]:
            continue
        name = f"quality-{variant}-{scale:g}x"
        try:
            inputs = {"sets": study.synthetic(variant, scale), "judge": cfg.judge, "test": cfg.test,
                      "train": cfg.privacy_train}
            out["quality"][row] = cells.run(name, inputs, lambda d, v=variant, n=scale: quality(
                [Path(p) for p in study.synthetic(v, n, files=True)], Path(cfg.test), cfg.judge,
                train=Path(cfg.privacy_train), gallery=d / "closest.png", out=d / "quality.json"))
        except CellMissing as e:
            _missing(out, name, e)
    for row in ["real", *(f"syn-{n:g}x" for n in cfg.synthetic_scales)]:
        if row in trained:
            model = out["rows"][row]["model"][0]
            try:
                out["probes"][row] = cells.run(f"probe-{row}", {"model": model, "data": cfg.test},
                                               lambda d, row=row: _probe(trained[row](True)["model"], cfg.test, d))
            except CellMissing as e:
                _missing(out, f"probe-{row}", e)
    return out


def _missing(out: dict[str, Any], what: str, e: CellMissing) -> None:
    """List ``what`` (a row, set or probe left out of a report of done cells) once, with the missing cell."""
    if what not in {m["what"] for m in out["missing"]}:
        out["missing"].append({"what": what, "why": str(e)})


def compare_to_real(rows: dict[str, dict[str, Any]], labels: np.ndarray) -> None:
    """Add each row's paired-bootstrap difference to ``real`` (in place; nothing without a ``real`` row):
    ``vs_real`` of the first seeds' models, and for a row trained at two or more of real's seeds
    ``vs_real_seeds``: per matching seed, and of the mean over them (each face's share of the seeds' models that
    get it right; the interval covers test-face sampling, while the spread between seeds shows in ``by_seed``).

    ``labels``: (N,) the test faces' class indices; rows hold ``predictions`` (N,) of their first seed and, with
    several seeds, ``predictions_by_seed`` (S, N). With a ``real-control`` row, each ``real+syn-*`` row also gets
    ``vs_control``: its difference to the control at the control's seed.
    """
    from .stats import paired_bootstrap

    def by_seed(r: dict[str, Any]) -> dict[int, np.ndarray]:
        preds = r.get("predictions_by_seed") or [r["predictions"]]
        return {s: np.asarray(p) == labels for s, p in zip(r["seeds"][:len(preds)], preds, strict=True)}

    if "real" not in rows:
        return
    real = by_seed(rows["real"])
    base = real[rows["real"]["seeds"][0]]
    for name, r in rows.items():
        mine = by_seed(r)
        r["vs_real"] = paired_bootstrap(mine[r["seeds"][0]], base)
        common = [s for s in mine if s in real]
        if name != "real" and len(common) > 1:
            mean = paired_bootstrap(np.mean([mine[s] for s in common], 0), np.mean([real[s] for s in common], 0))
            r["vs_real_seeds"] = {"seeds": common, "mean": mean,
                                  "by_seed": [paired_bootstrap(mine[s], real[s]) for s in common]}
    if "real-control" in rows:  # the mixed rows against real at their steps, at the control's seed
        ctrl = rows["real-control"]
        seed, right = ctrl["seeds"][0], by_seed(ctrl)[ctrl["seeds"][0]]
        for name, r in rows.items():
            if name.startswith("real+syn") and seed in (mine := by_seed(r)):
                r["vs_control"] = {"seed": seed, **paired_bootstrap(mine[seed], right)}


def _probe(model: str, data: str, out: Path) -> dict[str, Any]:
    from ..classifiers.probe import probe

    probe(model, Path(data), out=out, shots=[10])
    r = json.loads((out / "probe.json").read_text())
    return {"linear_probe": round(100 * r["linear_probe"]["accuracy"], 2),
            "10_shot": round(100 * r["few_shot"]["10"]["accuracy_mean"], 2),
            "10_shot_std": round(100 * r["few_shot"]["10"]["accuracy_std"], 2)}


def au_sweep_cells(cells: Cells, cfg: ExperimentConfig) -> dict[str, str]:
    """The report's AU sweeps (one PNG per AU)."""
    from ..synthesize.sample import au_sweep

    return {au: cells.run(f"au-sweep-{au}", {"pipeline": cfg.generator, "au": au}, lambda d, au=au: {
        "image": str(au_sweep(d / f"{au}.png", au=au, pipeline=cfg.generator))}, files=True)["image"]
        for au in cfg.au_sweeps}
