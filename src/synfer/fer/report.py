"""The study's report: ``report.md`` (tables) and ``report.html`` (tables and figures) from ``results.json``.

Figures (``WORK/figures/``): the scaling curve (test accuracy against the synthetic set's size, real-only as a line),
per-class test recall of real / largest synthetic / real + largest synthetic, their confusion matrices, and a sample
grid per generator variant (each set's preview: rows are expressions).
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

#: The paper's figures next to which ours are shown (AffectNet / RAF-DB; SynFER §5; ours are on FER+).
PAPER = {
    "real+synthetic": "POSTER++ 91.59 -> 91.95 (RAF-DB), 67.49 -> 69.04 (AffectNet)",
    "synthetic only": "AffectNet: 67.23% at 1x the real train size, 69.84% at 5x",
    "ablations": "generated-face expression accuracy: SD 20.06 -> +FEText 34.62 -> +AUs 48.74 -> +guidance 55.14",
    "probes": "MoCo v3 ResNet-50 linear probe, AffectNet: 51.03 (real) -> 55.56 (synthetic) -> 57.84 (both)",
}


def _mean(v: list[float]) -> float:
    return float(np.mean(v)) if v else float("nan")


def _by_scale(rows: dict[str, Any], prefix: str) -> dict[float, float]:
    """Mean test accuracy of the rows named ``{prefix}{N}x`` (``syn-`` or ``real+syn-``), by N."""
    pattern = re.escape(prefix) + r"([\d.]+)x"
    return {float(m.group(1)): _mean(r["accuracy"]) for k, r in rows.items() if (m := re.fullmatch(pattern, k))}


def _au_table(quality: dict[str, Any]) -> list[str]:
    """Per-AU Pearson r (target vs measured) of every variant with target AUs."""
    with_aus = {v: q["au_control"] for v, q in quality.items() if q.get("au_control", {}).get("per_au")}
    if not with_aus:
        return []
    first = next(iter(with_aus.values()))
    aus = list(first.get("varying") or first["per_au"])
    lines = ["", f"AU control per AU (Pearson r, targets vs the {first.get('estimator', 'AU')} estimator on the "
             "generated faces; AUs whose targets vary):", "",
             "| variant | " + " | ".join(aus) + " |", "|---|" + "---|" * len(aus)]
    for v, a in with_aus.items():
        cells = [a["per_au"].get(n, {}).get("r") for n in aus]
        lines.append(f"| {v} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")
    return lines


def _targets(results: dict[str, Any]) -> list[str]:
    """The study's targets, each marked met or missed from this run's numbers."""
    rows, quality, out = results["rows"], results.get("quality", {}), []
    real = _mean(rows["real"]["accuracy"]) if "real" in rows else None
    syn, mix = _by_scale(rows, "syn-"), _by_scale(rows, "real+syn-")
    if real is not None and syn:
        n = max(syn)
        out.append(f"- synthetic only at {n:g}x >= 95% of real only: {syn[n]:.2f} / {real:.2f} = "
                   f"{100 * syn[n] / real:.1f}% -> {'met' if syn[n] >= 0.95 * real else 'missed'}")
    if real is not None and mix:
        best = max(mix, key=mix.get)
        out.append(f"- real + synthetic beats real only by >= 1 point: best real+syn-{best:g}x {mix[best]:.2f} vs "
                   f"{real:.2f} ({mix[best] - real:+.2f}) -> {'met' if mix[best] >= real + 1 else 'missed'}")
    steps = [v for v in ("text", "aus", "aus+guidance", "aus+guidance+voting") if v in quality]
    if len(steps) > 1:
        accs = [quality[v]["expression_accuracy"] for v in steps]
        chain = " -> ".join(f"{v} {a:.1f}" for v, a in zip(steps, accs, strict=True))
        rising = all(b > a for a, b in zip(accs, accs[1:], strict=False))
        out.append(f"- each generator ablation step raises the judge's expression accuracy: {chain} -> "
                   f"{'met' if rising else 'missed'}")
    if any(line.endswith("missed") for line in out) and (q := quality.get("aus+guidance")):
        ref = q.get("real_reference", {})
        ceiling = f" (its mean per-class recall on real test faces: {ref['mean_recall']:.1f}%)" if ref else ""
        out.append(f"- what limits the synthetic rows: label fidelity and realism of the generated faces. The judge "
                   f"recognises the intended expression in {q['expression_accuracy']:.1f}% of the aus+guidance faces"
                   f"{ceiling}; their FD-FER to the real test faces is {q['fd_fer']:.3f}.")
    return ["", "Targets (measured in this run):", "", *out] if out else []


def _setup(results: dict[str, Any]) -> list[str]:
    """One line on what every row was trained with (the training budget is the same for all)."""
    c = results.get("classifier")
    if not c:
        return []
    per_epoch = f"{c['epoch_size']:,} faces (the same for every row)" if c.get("epoch_size") else "every face once"
    n = results.get("real_train_faces")
    return ["", f"Real training faces: {'?' if n is None else f'{n:,}'}; seeds {results['config']['seeds']}. "
            f"Classifier: {c.get('architecture')}, {c.get('epochs')} epochs of {per_epoch}, batch "
            f"{c.get('batch_size')}, lr {c.get('lr')}."]


def markdown(results: dict[str, Any]) -> str:
    lines = ["# SynFER study on FER+", "",
             f"{'Reduced scale (CPU).' if results['reduced'] else 'Full scale.'} Classifiers chosen on the real "
             "validation split, scored once on the real test split; mean over seeds (every seed in results.json).",
             *_setup(results), "", "| row | test accuracy (%) | macro-F1 (%) | seeds |", "|---|---|---|---|"]
    for row, r in results["rows"].items():
        lines.append(f"| {row} | {_mean(r['accuracy']):.2f} | {_mean(r['macro_f1']):.2f} | {len(r['accuracy'])} |")
    if results.get("quality"):
        lines += ["", "Generator ablations, judged by an independent classifier:", "",
                  "| variant | expression accuracy (%) | FD-FER | KID-FER | diversity | AU control (mean r) |",
                  "|---|---|---|---|---|---|"]
        for v, q in results["quality"].items():
            r = q.get("au_control", {}).get("mean_r")
            lines.append(f"| {v} | {q['expression_accuracy']:.1f} | {q['fd_fer']:.3f} | {q['kid_fer']['mean']:.4f} | "
                         f"{q['diversity']['synthetic']['mean']:.3f} | {'-' if r is None else f'{r:.3f}'} |")
        refs = [q["real_reference"] for q in results["quality"].values() if q.get("real_reference")]
        if refs:
            lines += ["", f"The judge on the real test faces: accuracy {refs[0]['expression_accuracy']:.1f}%, mean "
                      f"per-class recall {refs[0]['mean_recall']:.1f}% (what faces as recognisable as real ones would score on a class-balanced set)."]
        lines += _au_table(results["quality"])
    if results.get("probes"):
        lines += ["", "Frozen backbones (supervised on real vs on synthetic faces), probed on real FER+ (linear: all "
                  "training faces; 10-shot: mean over 5 draws):", "",
                  "| backbone trained on | linear probe (%) | 10-shot (%) |", "|---|---|---|"]
        for row, p in results["probes"].items():
            lines.append(f"| {row} | {p['linear_probe']:.2f} | {p['10_shot']:.2f} +- {p['10_shot_std']:.2f} |")
    lines += _targets(results)
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


def _plot_per_class(models: dict[str, str], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recalls = {}
    for row, model in models.items():
        m = Path(model) / "test" / "metrics.json"
        if m.is_file():
            d = json.loads(m.read_text())
            recalls[row] = {n: 100 * (c["recall"] or 0.0) for n, c in d["per_class"].items()}
    if not recalls:
        return None
    names = list(next(iter(recalls.values())))
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    width = 0.8 / len(recalls)
    for i, (row, rec) in enumerate(recalls.items()):
        ax.bar(np.arange(len(names)) + i * width, [rec[n] for n in names], width, label=row)
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


def write_report(results: dict[str, Any], work: Path) -> Path:
    """``WORK/report.md`` and ``WORK/report.html`` (with ``WORK/figures/``); returns the Markdown path."""
    work = Path(work)
    md = markdown(results)
    (work / "report.md").write_text(md)
    figures = work / "figures"
    figures.mkdir(exist_ok=True)
    shown: list[tuple[str, Path]] = []
    rows = results["rows"]
    largest = f"syn-{max(scales):g}x" if (scales := _by_scale(rows, "syn-")) else None
    key_rows = [k for k in ("real", largest, f"real+{largest}" if largest else None) if k in rows]
    if (p := _plot_scaling(results, figures / "scaling.png")) is not None:
        shown.append(("Scaling: test accuracy against the synthetic set's size", p))
    if (p := _plot_per_class({k: rows[k]["models"][0] for k in key_rows}, figures / "per_class.png")) is not None:
        shown.append(("Per-class test recall", p))
    for k in key_rows:
        cm = Path(rows[k]["models"][0]) / "test" / "confusion_matrix.png"
        if cm.is_file():
            shutil.copyfile(cm, figures / f"confusion-{k}.png")
            shown.append((f"Confusion matrix, {k}", figures / f"confusion-{k}.png"))
    for au, image in results.get("au_sweeps", {}).items():
        if Path(image).is_file():
            shutil.copyfile(image, figures / f"au-sweep-{au}.png")
            shown.append((f"AU sweep: {au} from 0 to 1 (columns), other AUs at the neutral targets; rows are seeds",
                          figures / f"au-sweep-{au}.png"))
    for v, q in results.get("quality", {}).items():
        grid = Path(q["data"]) / "preview.png"
        if grid.is_file():
            target = figures / f"samples-{re.sub(r'[^A-Za-z0-9]+', '_', v)}.png"
            shutil.copyfile(grid, target)
            shown.append((f"Samples, generator variant {v} (rows: expressions)", target))
    body = [_html(md)]
    body += [f"<h3>{html.escape(t)}</h3><img src=\"figures/{p.name}\" alt=\"{html.escape(t)}\">" for t, p in shown]
    (work / "report.html").write_text("<!doctype html><html><head><meta charset=\"utf-8\"><title>SynFER study on "
                                      "FER+</title></head><body>" + "\n".join(body) + "</body></html>\n")
    return work / "report.md"
