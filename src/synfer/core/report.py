"""Inspecting dataset folders: validate (``synfer validate``) and summarise (``synfer info``).

Both only read. Problems are returned as lines naming the shard, record or image; lines starting with
``warning:`` (orphan images, say) do not make a folder invalid.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from ..schema import DatasetHeader
from .dataset import (
    HEADER_FILE,
    IMAGES_DIR,
    RECORD_SCHEMA,
    DatasetError,
    DatasetFolder,
    Record,
    read_header,
    shard_files,
    validate_record,
)
from .ops import WARNING, ordered_splits


def validate_dataset(path: Path, check_images: bool = True) -> list[str]:
    """Every problem found in a dataset folder, one line each (empty: valid).

    Checks the header, the complete flag, every shard's columns, duplicate ids (also across shards), each
    record against the header, image paths (``images/<id>.png``), the header's record count, and with
    ``check_images`` that each image exists and decodes as a PNG. Images without a record and leftover
    temporary files are reported as lines starting with ``"warning:"``.
    """
    path = Path(path)
    try:
        header = read_header(path)
    except DatasetError as e:
        return [str(e)]
    problems: list[str] = []
    if not header.complete:
        problems.append(f"{path} is incomplete: its writer did not finish; rerun its command with --resume.")
    seen: dict[str, str] = {}
    referenced: set[str] = set()
    n_rows = 0
    for shard in shard_files(path):
        try:
            table = pq.read_table(shard)
            if missing := [c for c in RECORD_SCHEMA.names if c not in table.column_names]:
                problems.append(f"{shard.name}: missing columns {missing}; not a synfer records shard.")
                continue
            table = table.select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA)
        except Exception as e:  # pyarrow raises several types for a damaged file or a wrong column type
            problems.append(f"{shard.name}: unreadable records shard ({e}).")
            continue
        for row in table.to_pylist():
            n_rows += 1
            problems.extend(_row_problems(row, header, shard.name, seen, path, check_images))
            referenced.add(str(row["image"]))
    problems.extend(_order_problems(path, header))
    recorded = header.stats.get("records")
    if header.complete and recorded is not None and recorded != n_rows:
        problems.append(f"{path}: the header counts {recorded} records but the shards hold {n_rows}; a shard "
                        "was added or removed outside synfer.")
    images = path / IMAGES_DIR
    for f in sorted(images.iterdir()) if images.is_dir() else []:
        if f.name.startswith(".tmp-"):
            problems.append(f"{WARNING} {IMAGES_DIR}/{f.name} is a leftover temporary file; delete it.")
        elif f"{IMAGES_DIR}/{f.name}" not in referenced:
            problems.append(f"{WARNING} {IMAGES_DIR}/{f.name} has no record (orphan image).")
    return problems


def _order_problems(path: Path, header: DatasetHeader) -> list[str]:
    """A header whose expression order was changed by hand: most labels then disagree with their own soft labels
    (each record's ``label_probs`` follow the order the folder was written in)."""
    try:
        folder = DatasetFolder(path, allow_incomplete=True)
    except DatasetError:
        return []  # reported elsewhere
    pairs = [(e, p) for e, p in zip(folder.column("expression"), folder.column("label_probs"), strict=True)
             if e is not None and p is not None and len(p) == len(header.expressions)]
    if len(pairs) < 10:
        return []
    agree = sum(header.expressions[int(np.argmax(p))] == e for e, p in pairs) / len(pairs)
    if agree >= 0.5:
        return []
    return [f"{path}: only {agree:.0%} of {len(pairs)} labels agree with the largest entry of their own label_probs "
            f"under the header's expression order {list(header.expressions)}; was the order in {HEADER_FILE} "
            "edited? Restore it (synfer filter --expressions re-maps a folder explicitly)."]


def _row_problems(row: dict, header: DatasetHeader, shard: str, seen: dict[str, str], root: Path,
                  check_images: bool) -> list[str]:
    rid, out, at = row["id"], [], f"{shard}: record {row['id']!r}:"
    if rid in seen:
        out.append(f"{shard}: duplicate record id {rid!r} (also in {seen[rid]}).")
    seen.setdefault(rid, shard)
    try:
        meta = json.loads(row["meta"]) if row["meta"] else {}
        fields = {k: row[k] for k in ("split", "source", "expression", "label_probs", "aus", "caption")}
        validate_record(Record(id=rid, meta=meta, **fields), header, where=f"{shard}: ")
    except json.JSONDecodeError as e:
        out.append(f"{at} meta is not valid JSON ({e.msg}).")
    except DatasetError as e:
        out.append(str(e))
    expected = f"{IMAGES_DIR}/{rid}.png"
    if row["image"] != expected:
        out.append(f"{at} image path is {row['image']!r}, expected {expected!r}.")
    elif (root / expected).is_symlink():
        out.append(f"{at} {expected} is a symbolic link; a dataset folder's images must be its own files.")
    elif check_images:
        try:
            with Image.open(root / expected) as im:
                im.load()
                if im.format != "PNG":
                    out.append(f"{at} {expected} is a {im.format} file, not a PNG.")
                elif im.mode not in ("L", "RGB"):
                    out.append(f"{at} {expected} is a {im.mode} image; dataset folders hold 8-bit L or RGB "
                               "images (synfer's importers convert them: re-import it).")
        except FileNotFoundError:
            out.append(f"{at} image {expected} is missing.")
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            out.append(f"{at} image {expected} does not decode ({type(e).__name__}: {e}).")
    return out


def check_dataset(path: Path, check_images: bool = True, max_listed: int | None = 10) -> list[str]:
    """Raise :class:`DatasetError` listing the problems (the first ``max_listed``; None: all) if
    :func:`validate_dataset` finds any that is not a warning.

    Returns:
        the warning lines (orphan images, leftover temporary files).
    """
    problems = validate_dataset(path, check_images)
    errors = [p for p in problems if not p.startswith(WARNING)]
    if errors:
        shown = errors if max_listed is None else errors[:max_listed]
        more = "" if len(shown) == len(errors) else \
            f"\n  ... and {len(errors) - len(shown)} more; run `synfer validate {path}` for the full list."
        listed = "\n".join(f"  - {p}" for p in shown)
        raise DatasetError(f"{path} failed validation with {len(errors)} problem(s):\n{listed}{more}")
    return [p for p in problems if p.startswith(WARNING)]


def validate(path: Path, check_images: bool = True) -> str:
    """Check a dataset folder (header, records, ids, images); list every problem and fail if any is found.

    Args:
        path: the dataset folder.
        check_images: also open every image (slower; finds missing and corrupt files).
    """
    warnings = check_dataset(path, check_images, max_listed=None)
    return "\n".join([f"{path}: valid ({len(DatasetFolder(path))} records).", *warnings])


# ------------------------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------------------------


def dataset_summary_dict(path: Path) -> dict[str, Any]:
    """The data behind :func:`dataset_summary` (``synfer info --json``); reads incomplete folders too."""
    folder = DatasetFolder(path, allow_incomplete=True)
    h = folder.header
    counts = folder.counts()
    captions = sum(1 for c in folder.column("caption") if c)
    return {
        "path": str(folder.path), "complete": h.complete, "records": len(folder),
        "counts": {s: counts[s] for s in ordered_splits(list(counts))},
        "expressions": list(h.expressions), "aus": h.aus.to_dict() if h.aus is not None else None,
        "au_means": _au_means(folder), "captions": {"with_caption": captions, "records": len(folder)},
        "stats": h.stats, "licence": h.licence, "provenance": h.provenance,
    }


def au_means(path: Path | DatasetFolder) -> dict[str, dict[str, float]] | None:
    """Mean intensity of each AU per expression, ``{expression: {AU column: mean}}`` in header order, over the
    records that have AU values (None when the folder has none); unlabelled records are grouped as "(none)"."""
    return _au_means(path if isinstance(path, DatasetFolder) else DatasetFolder(path, allow_incomplete=True))


def _au_means(folder: DatasetFolder) -> dict[str, dict[str, float]] | None:
    """Mean of each AU per expression over records that have AU values (None when there are none)."""
    if folder.header.aus is None:
        return None
    values: dict[str, list] = {}
    for expr, aus in zip(folder.column("expression"), folder.column("aus"), strict=True):
        if aus is not None:
            values.setdefault(expr or "(none)", []).append(aus)
    order = [e for e in (*folder.expressions, "(none)") if e in values]
    means = {e: np.mean(values[e], axis=0).round(4).tolist() for e in order}
    return {e: dict(zip(folder.au_names, m, strict=True)) for e, m in means.items()} or None


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(r, widths, strict=True))) for r in cells)


def counts_table(counts: dict[str, dict[str, int]], expressions: Sequence[str]) -> str:
    """Records per class (rows, header order) and split (columns), with totals."""
    splits = ordered_splits(list(counts))
    unlabelled = ["(none)"] if any("(none)" in c for c in counts.values()) else []
    rows = [[e, *(counts[s].get(e, 0) for s in splits), sum(counts[s].get(e, 0) for s in splits)]
            for e in [*expressions, *unlabelled]]
    totals = [sum(counts[s].values()) for s in splits]
    return format_table(["class", *splits, "total"], [*rows, ["total", *totals, sum(totals)]])


def dataset_summary(path: Path) -> str:
    """Human-readable description of a dataset folder (the text of ``synfer info PATH``)."""
    d = dataset_summary_dict(path)
    status = "complete" if d["complete"] else "INCOMPLETE (writer interrupted; rerun with --resume)"
    lines = [f"dataset: {d['path']}", f"status: {status}", f"records: {d['records']}", ""]
    lines += ["counts (classes x splits):", counts_table(d["counts"], d["expressions"]), ""]
    lines.append("expression order: " + ", ".join(f"{i} {e}" for i, e in enumerate(d["expressions"])))
    aus = d["aus"]
    lines.append(f"AU set: {', '.join(aus['names'])} (scale {aus['scale']})" if aus else "AU set: none yet")
    if d["au_means"]:
        rows = [[e, *(f"{m[n]:.3f}" for n in aus["names"])] for e, m in d["au_means"].items()]
        lines += ["AU means per expression:", format_table(["expression", *aus["names"]], rows)]
    cap, n = d["captions"]["with_caption"], d["records"]
    lines.append(f"captions: {cap} of {n} records" + (f" ({100 * cap / n:.1f}%)" if n else ""))
    stats = {k: v for k, v in d["stats"].items() if k != "records"}
    lines.append("stats:" if stats else "stats: none")
    for key, value in stats.items():
        if key == "skipped" and isinstance(value, dict):  # {reason: {"count", "examples"}}
            value = ", ".join(f"{r} {v.get('count') if isinstance(v, dict) else v}" for r, v in value.items())
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        lines.append(f"  {key}: {value}")
    if d["licence"]:
        lines.append(f"licence: {d['licence']}")
    lines.append("provenance:")
    for i, p in enumerate(d["provenance"], start=1):
        lines.append(f"  {i}. {p.get('stage', '?')}  {p.get('time', '?')}  "
                     f"synfer {p.get('synfer_version', '?')}")
        lines.append(f"     config: {json.dumps(p.get('config', {}), sort_keys=True)}")
        if "counts" in p:
            lines.append(f"     counts: {json.dumps(p['counts'], sort_keys=True)}")
        for m in p.get("merged_from", []):
            stages = ", ".join(q.get("stage", "?") for q in m.get("provenance", []))
            lines.append(f"     merged from: {m.get('path')} ({m.get('records')} records; stages: {stages})")
    return "\n".join(lines)


def _to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2)


def info(path: Path, json: bool = False) -> str:
    """Describe a dataset folder: counts per split and class, label and AU orders, stats, provenance.

    Args:
        path: the dataset folder.
        json: print the same data as JSON.
    """
    return _to_json(dataset_summary_dict(path)) if json else dataset_summary(path)
