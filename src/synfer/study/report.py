"""The study's report: ``report.md`` (tables) and ``report.html`` (tables and figures) from ``results.json``.

Figures (``WORK/figures/``): the scaling curve (test accuracy against the synthetic set's size, real-only as a line),
per-class test recall and confusion matrices of real / synthetic / real + synthetic (from the kept test
predictions), the AU sweeps, a sample grid per generated set and its closest pairs to training faces.
"""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

#: The paper's figures next to which ours are shown (AffectNet / RAF-DB; SynFER §5; ours are on FER+).
PAPER = {
    "real+synthetic": "POSTER++ 91.59 -> 91.95 (RAF-DB, +0.36), 67.49 -> 69.04 (AffectNet, +1.55)",
    "synthetic only": "AffectNet: 67.23% at 1x the real train size (99.6% of real only), 69.84% at 5x",
    "ablations": "generated-face expression accuracy: SD 20.06 -> +FEText 34.62 -> +AUs 48.74 -> +guidance 55.14",
    "probes": "MoCo v3 ResNet-50 linear probe, AffectNet: 51.03 (real) -> 55.56 (synthetic) -> 57.84 (both)",
}


def _mean(v: list[float]) -> float:
    return float(np.mean(v)) if v else float("nan")


def _by_scale(rows: dict[str, Any], prefix: str) -> dict[float, float]:
    """Mean test accuracy of the rows named ``{prefix}{N}x`` (``syn-`` or ``real+syn-``), by N."""
    pattern = re.escape(prefix) + r"([\d.]+)x"
    return {float(m.group(1)): _mean(r["accuracy"]) for k, r in rows.items() if (m := re.fullmatch(pattern, k))}


#: Each generator ablation and the one it adds a step to (per-face and class-mean AU targets both add AUs to
#: text only).
ABLATION_PARENT = {"aus": "text", "aus-class-mean": "text", "aus+guidance": "aus",
                   "aus+guidance+voting": "aus+guidance"}


def _fmt(v: dict[str, Any]) -> str:
    """A paired-bootstrap difference: ``+1.23 [+0.10, +2.40]``."""
    return f"{v['difference']:+.2f} [{v['ci95'][0]:+.2f}, {v['ci95'][1]:+.2f}]"


def _ci(name: str, r: dict[str, Any]) -> str:
    """The rows table's cell: a row's difference to real only, per seed and on their mean where it has both."""
    if name == "real":
        return "reference"
    v, seeds = r.get("vs_real"), r.get("vs_real_seeds")
    if not v:
        return "-"
    if not seeds:
        return _fmt(v)
    return f"mean of seeds: {_fmt(seeds['mean'])} ({'; '.join(_by_seed(seeds))})"


def _by_seed(seeds: dict[str, Any]) -> list[str]:
    """``seed S: difference [interval]`` for each seed of a row's ``vs_real_seeds``."""
    return [f"seed {s}: {_fmt(b)}" for s, b in zip(seeds["seeds"], seeds["by_seed"], strict=True)]


def _rows_table(results: dict[str, Any]) -> list[str]:
    lines = ["| row | test accuracy (%) | vs real: difference [95% CI] | macro-F1 (%) | val accuracy (%) | "
             "training (min) |", "|---|---|---|---|---|---|"]
    for row, r in results["rows"].items():
        accs = ", ".join(f"{a:.2f}" for a in r["accuracy"])
        mean = f"{_mean(r['accuracy']):.2f}" + (f" (seeds {r['seeds']}: {accs})" if len(r["accuracy"]) > 1 else "")
        minutes = _mean(r.get("train_seconds", [])) / 60
        lines.append(f"| {row} | {mean} | {_ci(row, r)} | {_mean(r['macro_f1']):.2f} | "
                     f"{_mean(r.get('val_accuracy', [])):.2f}"
                     f" | {minutes:.0f} |")
    return lines


def _per_class_table(results: dict[str, Any]) -> list[str]:
    rows = {k: r["per_class_recall"][0] for k, r in results["rows"].items() if r.get("per_class_recall")}
    if not rows:
        return []
    names = list(next(iter(rows.values())))
    lines = ["", "Per-class test recall (%), first seed:", "", "| row | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for row, rec in rows.items():
        lines.append(f"| {row} | " + " | ".join("-" if rec[n] is None else f"{rec[n]:.1f}" for n in names) + " |")
    return lines


def _quality_table(quality: dict[str, Any]) -> list[str]:
    if not quality:
        return []
    lines = ["", "Every synthetic set, judged by an independent classifier, and how close it comes to the generator's "
             "training faces (near-copies: nearer than 99% of real test faces are; pixels / judge features):", "",
             "| set | faces | judge accuracy (%) | FD-FER | KID-FER | diversity | AU r | near-copies | fewest distinct "
             "nearest training faces (class) |", "|---|---|---|---|---|---|---|---|---|"]
    for row, q in quality.items():
        au = q.get("au_control", {}).get("mean_r")
        p = q.get("privacy", {})
        near = f"{p['pixels']['near_copies']} / {p['judge_features']['near_copies']}" if p else "-"
        fewest = "-"
        if p:
            per = p["pixels"]["per_class"]
            c = min(per, key=lambda n: per[n]["distinct_nearest_training_faces"] / max(1, per[n]["faces"]))
            fewest = f"{per[c]['distinct_nearest_training_faces']} of {per[c]['faces']} ({c})"
        lines.append(f"| {row} | {q['faces']} | {q['expression_accuracy']:.1f} | {q['fd_fer']:.3f} | "
                     f"{q['kid_fer']['mean']:.4f} | {q['diversity']['synthetic']['mean']:.3f} | "
                     f"{'-' if au is None else f'{au:.3f}'} | {near} | {fewest} |")
    ref = next((q["real_reference"] for q in quality.values() if q.get("real_reference")), None)
    if ref:
        lines += ["", f"The judge on the real test faces: accuracy {ref['expression_accuracy']:.1f}%, mean per-class "
                  f"recall {ref['mean_recall']:.1f}%."]
    p = next((q["privacy"] for q in quality.values() if q.get("privacy")), None)
    if p:
        lines += [f"Real test faces (without the {p['test_faces_dropped_as_exact_training_copies']} exact copies of "
                  f"training images): nearest training face in pixels at median {p['pixels']['real_test_distance']['median']}"
                  f", 1st percentile {p['pixels']['threshold']} (the near-copy threshold)."]
    return lines


def _targets(results: dict[str, Any]) -> list[str]:
    """The study's targets, each marked met or missed from this run's numbers."""
    rows, quality, out = results["rows"], results.get("quality", {}), []
    real = _mean(rows["real"]["accuracy"]) if "real" in rows else None
    if real is not None and (syn := rows.get("syn-1x")):
        s = _mean(syn["accuracy"])
        out.append(f"- synthetic only at 1x >= 90% of real only: {s:.2f} / {real:.2f} = {100 * s / real:.1f}% -> "
                   f"{'met' if s >= 0.9 * real else 'missed'}")
        out += [f"  - at {n:g}x: {a:.2f} / {real:.2f} = {100 * a / real:.1f}%"
                for n, a in sorted(_by_scale(rows, "syn-").items()) if n != 1]
    if real is not None and (mix := rows.get("real+syn-1x")) and mix.get("vs_real"):
        # on the mean over real only's seeds where the mixed row has them: one pair of seeds carries seed noise
        seeds = mix.get("vs_real_seeds")
        v = seeds["mean"] if seeds else mix["vs_real"]
        ok = v["difference"] >= 1 and v["ci95"][0] > 0
        which = f"mean of seeds {seeds['seeds']}; the interval covers test faces, not seeds" if seeds else \
            f"seed {mix['seeds'][0]}"
        out.append(f"- real + synthetic 1x beats real only by >= 1 point, interval excluding 0 ({which}): "
                   f"{_fmt(v)} -> {'met' if ok else 'missed'}")
        if seeds:
            out += [f"  - {line}" for line in _by_seed(seeds)]
        if (ctrl := rows.get("real-control")) and ctrl.get("vs_real"):
            out.append(f"- the control (real at the mixed row's steps): {_fmt(ctrl['vs_real'])} vs real "
                       f"(seed {ctrl['seeds'][0]})")
            if c := mix.get("vs_control"):
                out.append(f"  - real + synthetic 1x vs the control at seed {c['seed']}: {_fmt(c)} -> the gain "
                           f"{'is' if c['ci95'][0] > 0 else 'is not shown to be'} more than the extra steps")
    labels = np.asarray(results.get("test_labels", []))
    for b, a in ABLATION_PARENT.items():
        while a in ABLATION_PARENT and f"ablation-{a}" not in rows:  # a step not run: the one before it
            a = ABLATION_PARENT[a]
        ra, rb = f"ablation-{a}", f"ablation-{b}"
        if ra not in rows or rb not in rows:
            continue
        acc = (_mean(rows[ra]["accuracy"]), _mean(rows[rb]["accuracy"]))
        judge = tuple(quality.get(r, {}).get("expression_accuracy") for r in (ra, rb))
        raised = acc[1] > acc[0]
        diff = ""
        if len(labels) and all(rows[r].get("predictions") for r in (ra, rb)):
            from .stats import paired_bootstrap

            step = paired_bootstrap(np.asarray(rows[rb]["predictions"]) == labels,
                                    np.asarray(rows[ra]["predictions"]) == labels)
            raised = step["ci95"][0] > 0  # a gain counts where its interval excludes 0
            diff = f" ({_fmt(step)}, first seeds)"
        jtxt, judged_up = "", False
        if None not in judge:
            jtxt = f", judge {judge[0]:.1f} -> {judge[1]:.1f}"
            faces = [quality[r].get("faces") for r in (ra, rb)]
            if None not in faces:
                from .stats import unpaired_difference

                jstep = unpaired_difference(judge[1], faces[1], judge[0], faces[0])
                judged_up = jstep["ci95"][0] > 0  # a gain counts where its interval excludes 0
                jtxt += f" ({_fmt(jstep)})"
        up = raised or judged_up
        out.append(f"- {a} -> {b}: classifier {acc[0]:.2f} -> {acc[1]:.2f}{diff}{jtxt} -> "
                   f"{'met' if up else 'missed'}")
    return ["", "Targets (measured in this run; an ablation step counts where the classifiers' paired interval over "
            "test faces, or the judge's interval over the two sets' faces (normal, unpaired), excludes 0):", "",
            *out] if out else []


def _setup(results: dict[str, Any]) -> list[str]:
    c, n = results.get("classifier") or {}, results.get("real_train_faces")
    cfg = results.get("config", {})
    return ["", f"Real training faces: {'?' if n is None else f'{n:,}'} ({cfg.get('class_counts', 'real')} class "
            f"distribution for the synthetic sets). Classifier: {c.get('architecture')}, {c.get('epochs')} epochs "
            f"over each row's faces, batch {c.get('batch_size')}, lr {c.get('lr')}, precision "
            f"{c.get('precision', 'auto')}; seeds {cfg.get('seeds')}."]


def markdown(results: dict[str, Any]) -> str:
    lines = ["# SynFER study on FER+", "",
             f"{'Reduced scale (smoke mode).' if results['reduced'] else 'Full scale.'} Classifiers chosen on the "
             "real validation split, scored once on the real test split; intervals: paired bootstrap over the test "
             "faces (10,000 resamples) of each row's first-seed model against real only's; a row trained at "
             "real only's seeds against real only seed by seed, and on the mean over those seeds (each face's "
             "share of the seeds' models that get it right).", *_setup(results), "",
             *_rows_table(results), *_per_class_table(results), *_quality_table(results.get("quality", {}))]
    if results.get("probes"):
        lines += ["", "Frozen backbones (supervised on real vs on synthetic faces), probed on real FER+ (linear: all "
                  "training faces; 10-shot: mean over 5 draws):", "",
                  "| backbone trained on | linear probe (%) | 10-shot (%) |", "|---|---|---|"]
        for row, p in results["probes"].items():
            lines.append(f"| {row} | {p['linear_probe']:.2f} | {p['10_shot']:.2f} +- {p['10_shot_std']:.2f} |")
    lines += _targets(results)
    if results.get("missing"):
        lines += ["", "Not yet computed (this report holds the cells that are done):", ""]
        lines += [f"- {m['what']}: {m['why']}" for m in results["missing"]]
    lines += ["", "The paper's corresponding figures (other datasets, Stable Diffusion scale):", ""]
    lines += [f"- {k}: {v}" for k, v in PAPER.items()]
    return "\n".join(lines) + "\n"


def _plot_scaling(results: dict[str, Any], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    syn, mix = sorted(_by_scale(rows, "syn-").items()), sorted(_by_scale(rows, "real+syn-").items())
    if not syn and not mix:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=110)
    if syn:
        ax.plot(*zip(*syn, strict=True), "o-", label="synthetic only")
    if mix:
        ax.plot(*zip(*mix, strict=True), "s--", label="real + synthetic")
    if "real" in rows:
        ax.axhline(_mean(rows["real"]["accuracy"]), color="gray", ls=":", label="real only")
    ax.set_xlabel("synthetic faces (x real training size)")
    ax.set_ylabel("FER+ test accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_per_class(results: dict[str, Any], rows: list[str], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recalls = {r: results["rows"][r]["per_class_recall"][0] for r in rows}
    if not recalls:
        return None
    names = list(next(iter(recalls.values())))
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    width = 0.8 / len(recalls)
    for i, (row, rec) in enumerate(recalls.items()):
        ax.bar(np.arange(len(names)) + i * width, [rec[n] or 0.0 for n in names], width, label=row)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, ha="right")
    ax.set_ylabel("test recall (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _html(md: str) -> str:
    """Our Markdown (headings, paragraphs, tables, bullet lists) as HTML."""
    out, table = [], []

    def flush_table() -> None:
        if table:
            cells = [[html.escape(c.strip()) for c in r.strip("|").split("|")] for r in table if not r.startswith("|---")]
            head = "".join(f"<th>{c}</th>" for c in cells[0])
            rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in cells[1:])
            out.append(f"<table border=\"1\" cellpadding=\"4\"><tr>{head}</tr>{rows}</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("- "):
            out.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush_table()
    return "\n".join(out)


def _figures(results: dict[str, Any], figures: Path) -> list[tuple[str, Path]]:
    """Write the report's figures; (title, path) pairs in display order."""
    from ..classifiers.evaluate import plot_confusion
    from ..core.metrics import classification_metrics

    shown: list[tuple[str, Path]] = []
    rows = results["rows"]
    key_rows = [k for k in ("real", "syn-1x", "real+syn-1x") if k in rows]
    if (p := _plot_scaling(results, figures / "scaling.png")) is not None:
        shown.append(("Scaling: test accuracy against the synthetic set's size", p))
    if key_rows and (p := _plot_per_class(results, key_rows, figures / "per_class.png")) is not None:
        shown.append(("Per-class test recall", p))
    labels = np.asarray(results.get("test_labels", []))
    for k in key_rows:
        names = list(rows[k]["per_class_recall"][0])
        if len(labels) and rows[k].get("predictions"):
            m = classification_metrics(labels, np.asarray(rows[k]["predictions"]), names)
            plot_confusion(np.asarray(m["confusion_matrix"]), names, figures / f"confusion-{k}.png", k)
            shown.append((f"Confusion matrix, {k}", figures / f"confusion-{k}.png"))
    for au, image in results.get("au_sweeps", {}).items():
        if Path(image).is_file():
            shutil.copyfile(image, figures / f"au-sweep-{au}.png")
            shown.append((f"AU sweep: {au} from 0 to 1 (columns), other AUs at the neutral targets; rows are seeds",
                          figures / f"au-sweep-{au}.png"))
    for row, q in results.get("quality", {}).items():
        slug = re.sub(r"[^A-Za-z0-9]+", "_", row)
        grid = Path(q["data"][0]) / "preview.png"
        if grid.is_file():
            shutil.copyfile(grid, figures / f"samples-{slug}.png")
            shown.append((f"Samples, {row} (rows: expressions)", figures / f"samples-{slug}.png"))
        gallery = q.get("privacy", {}).get("gallery")
        if gallery and Path(gallery).is_file():
            shutil.copyfile(gallery, figures / f"closest-{slug}.png")
            shown.append((f"{row}: the generated faces closest to a training face (top) and that face (bottom)",
                          figures / f"closest-{slug}.png"))
    return shown


def write_report(results: dict[str, Any], work: Path) -> Path:
    """``WORK/report.md`` and ``WORK/report.html`` (with ``WORK/figures/``); returns the Markdown path."""
    work = Path(work)
    md = markdown(results)
    (work / "report.md").write_text(md)
    figures = work / "figures"
    figures.mkdir(exist_ok=True)
    shown = _figures(results, figures)
    body = [_html(md)]
    body += [f"<h3>{html.escape(t)}</h3><img src=\"figures/{p.name}\" alt=\"{html.escape(t)}\">" for t, p in shown]
    (work / "report.html").write_text("<!doctype html><html><head><meta charset=\"utf-8\"><title>SynFER study on "
                                      "FER+</title></head><body>" + "\n".join(body) + "</body></html>\n")
    return work / "report.md"
