"""Operations on dataset folders: filter, split, merge, validate, summarise.

Every operation that produces data reads complete folders and writes a NEW folder through
:class:`DatasetWriter` (atomic files, ``complete: true`` only at the end), never touching its input. The new
header carries the input's provenance followed by one entry for the operation. Images are hard-linked from
the input when it lies on the same filesystem (copied otherwise): see ``DatasetWriter.add(..., link=True)``.

Label orders are never re-indexed silently: :func:`filter_dataset` with ``remap_expressions`` is the explicit
way to re-order or subset a folder's expression set.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..schema import SPLITS, DatasetHeader, canonical_expression, check_same_order
from .dataset import SPLIT_RE, DatasetError, DatasetFolder, DatasetWriter, Record, check_replaceable
from .provenance import provenance_entry

WARNING = "warning:"
Rows = list[tuple[Record, Path]]  # records with the absolute path of their image


def records_with_images(folder: DatasetFolder) -> Rows:
    """Every record of a folder with the path of its image, in folder order (a symbolic link is refused)."""
    return list(zip(folder.records(), (folder.image_path(p) for p in folder.column("image")), strict=True))


def check_output_path(out: Path, inputs: Sequence[Path], overwrite: bool) -> None:
    """Refuse an output that overlaps an input (it would edit or delete it) or exists without overwrite."""
    o = Path(out).resolve()
    for src in inputs:
        s = Path(src).resolve()
        if o == s or s in o.parents or o in s.parents:
            raise DatasetError(f"Output {out} overlaps input {src}; write to a separate folder "
                               "(inputs are never edited).")
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} already exists; choose another output path or pass --overwrite.")
    if overwrite:
        check_replaceable(out)


def ordered_splits(splits: Sequence[str]) -> list[str]:
    """train, val, test first, then any other split names alphabetically."""
    return [s for s in SPLITS if s in splits] + sorted(s for s in set(splits) if s not in SPLITS)


def chosen_splits(folder: DatasetFolder, splits: Sequence[str] | None) -> list[str]:
    """The splits to act on, in :func:`ordered_splits` order: all present, or ``splits`` if all exist."""
    present = ordered_splits(folder.column("split"))
    if splits is not None and (unknown := [s for s in splits if s not in present]):
        raise DatasetError(f"{folder.path} has no split(s) {unknown}; its splits are {present}.")
    return present if splits is None else ordered_splits(splits)


def _group_rng(seed: int, *key: str) -> np.random.Generator:
    """A generator per (seed, group): a group's sample does not depend on which other groups exist."""
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed}.")
    return np.random.default_rng([seed, zlib.crc32("\0".join(key).encode())])


def _header_name(name: str, header: DatasetHeader, src: Path) -> str:
    canon = canonical_expression(name)
    if canon not in header.expressions:
        raise DatasetError(f"{src}: expression {name!r} is not in its set {list(header.expressions)}.")
    return canon


def _write(out: Path, rows: Rows, header: DatasetHeader, expressions: Sequence[str], provenance: list[dict],
           stats: dict, licence: str, overwrite: bool) -> Path:
    mode = "overwrite" if overwrite else "create"
    with DatasetWriter(out, expressions=expressions, aus=header.aus, mode=mode, licence=licence) as writer:
        writer.header.stats.update({k: v for k, v in stats.items() if k != "records"})
        for entry in provenance:
            writer.add_provenance(entry)
        for rec, image in rows:
            writer.add(rec, image, link=True)
    return out


# ------------------------------------------------------------------------------------------------------------
# filter / split / merge
# ------------------------------------------------------------------------------------------------------------


def filter_dataset(
    src: Path, out: Path, splits: list[str] | None = None, expressions: list[str] | None = None,
    sources: list[str] | None = None, max_per_class: int | None = None, seed: int = 0,
    remap_expressions: list[str] | None = None, overwrite: bool = False,
) -> Path:
    """Write the records of ``src`` that pass every given filter to a new folder ``out``.

    Args:
        src: the input dataset folder.
        out: the output folder (must not exist, or pass ``overwrite``).
        splits: keep only these splits.
        expressions: keep only records labelled with one of these (aliases accepted; drops unlabelled rows).
        sources: keep only records whose ``source`` starts with one of these prefixes (``"ferplus:"``).
        max_per_class: keep at most this many records per (split, expression): a seeded random sample.
        seed: seed of that sample (>= 0).
        remap_expressions: the output's expression order, a re-ordering or subset of the input's. label_probs
            are re-indexed to it and renormalised over the kept classes; records labelled outside it, or
            whose kept probability mass is 0, are dropped. Unlabelled records (expression None) are kept.
        overwrite: replace ``out`` if it exists.

    Returns:
        ``out``.
    """
    src, out = Path(src), Path(out)
    folder = DatasetFolder(src)
    check_output_path(out, [src], overwrite)
    header = folder.header
    chosen_splits(folder, splits)
    wanted = None if expressions is None else {_header_name(e, header, src) for e in expressions}
    order = tuple(header.expressions)
    if remap_expressions is not None:
        order = tuple(_header_name(e, header, src) for e in remap_expressions)
        if len(set(order)) != len(order) or not order:
            raise ValueError(f"remap_expressions must name distinct expressions; got {remap_expressions}.")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"max_per_class must be at least 1; got {max_per_class}.")
    columns = [header.expressions.index(n) for n in order]
    dropped: Counter[str] = Counter()
    kept: Rows = []
    for rec, image in records_with_images(folder):
        if splits is not None and rec.split not in splits:
            dropped["split"] += 1
        elif wanted is not None and rec.expression not in wanted:
            dropped["expression"] += 1
        elif sources is not None and not (rec.source or "").startswith(tuple(sources)):
            dropped["source"] += 1
        elif rec.expression is not None and rec.expression not in order:
            dropped["remap_expression_dropped"] += 1
        elif remap_expressions is not None and rec.label_probs is not None:
            probs = np.take(np.asarray(rec.label_probs, np.float64), columns)
            if probs.sum() <= 0:
                dropped["remap_zero_probability_mass"] += 1
                continue
            rec.label_probs = (probs / probs.sum()).tolist()
            kept.append((rec, image))
        else:
            kept.append((rec, image))
    if max_per_class is not None:
        before = len(kept)
        kept = _sample_per_class(kept, max_per_class, seed)
        dropped["max_per_class"] = before - len(kept)
    if not kept:
        raise DatasetError(f"The filter keeps none of the {len(folder)} records of {src} (dropped by: "
                           f"{dict(dropped)}); check the split, expression and source values.")
    config = {"src": str(src.resolve()), "splits": splits, "expressions": expressions, "sources": sources,
              "max_per_class": max_per_class, "seed": seed, "remap_expressions": remap_expressions}
    counts = {"input": len(folder), "kept": len(kept), "dropped": dict(dropped)}
    entry = provenance_entry("filter", config, counts=counts)
    return _write(out, kept, header, order, [*header.provenance, entry], header.stats, header.licence,
                  overwrite)


def _sample_per_class(rows: Rows, n: int, seed: int) -> Rows:
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, (rec, _) in enumerate(rows):
        groups[(rec.split, rec.expression or "(none)")].append(i)
    keep: list[int] = []
    for key, idx in groups.items():
        if len(idx) > n:
            idx = np.take(idx, _group_rng(seed, *key).choice(len(idx), n, replace=False)).tolist()
        keep.extend(idx)
    return [rows[i] for i in sorted(keep)]


def split_dataset(
    src: Path, out: Path, from_split: str = "train", to_split: str = "val", fraction: float = 0.1,
    seed: int = 0, stratify: bool = True, overwrite: bool = False,
) -> Path:
    """Move a seeded fraction of ``from_split`` into a new split ``to_split``, writing a new folder.

    With ``stratify`` every expression keeps (as nearly as integers allow) the same share in both splits:
    each class gives floor(fraction * n) records, and the rounding remainders go to the classes with the
    largest fractional parts until the total is round(fraction * N).

    Args:
        src: the dataset folder to split (read only).
        out: the new folder to write.
        from_split: the split faces are moved out of.
        to_split: the new split they form (it must not exist yet).
        fraction: the share of ``from_split`` that moves, strictly between 0 and 1.
        seed: seeds the choice of faces (the same seed picks the same faces).
        stratify: keep every expression's share equal in both splits.
        overwrite: replace ``out`` if it exists.

    Returns:
        ``out``.

    Raises:
        DatasetError: ``to_split`` already has records, ``from_split`` has none, or nothing would move.
    """
    src, out = Path(src), Path(out)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie strictly between 0 and 1; got {fraction}.")
    for name, value in (("from_split", from_split), ("to_split", to_split)):
        if not SPLIT_RE.match(value):
            raise ValueError(f"{name} {value!r}: use a lower-case name such as train, val or test.")
    if from_split == to_split:
        raise ValueError(f"from_split and to_split are both {from_split!r}.")
    folder = DatasetFolder(src)
    check_output_path(out, [src], overwrite)
    rows = records_with_images(folder)
    if n_to := sum(rec.split == to_split for rec, _ in rows):
        raise DatasetError(f"{src} already has {n_to} {to_split!r} records; split_dataset only creates a new "
                           "split. Pick another to_split, or drop that split first with filter_dataset.")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (rec, _) in enumerate(rows):
        if rec.split == from_split:
            groups[(rec.expression or "(none)") if stratify else "all"].append(i)
    n_from = sum(map(len, groups.values()))
    if not n_from:
        raise DatasetError(f"{src} has no {from_split!r} records; its splits are "
                           f"{ordered_splits(folder.column('split'))}.")
    total = math.floor(fraction * n_from + 0.5)
    quota = {k: math.floor(fraction * len(v)) for k, v in groups.items()}
    by_remainder = sorted(groups, key=lambda k: (-(fraction * len(groups[k]) - quota[k]), k))
    for k in by_remainder[: max(0, total - sum(quota.values()))]:
        quota[k] += 1
    moved: Counter[str] = Counter()
    for key, idx in sorted(groups.items()):
        for j in _group_rng(seed, from_split, key).choice(len(idx), quota[key], replace=False):
            rec = rows[idx[j]][0]
            rec.split = to_split
            moved[rec.expression or "(none)"] += 1
    if not moved:
        raise DatasetError(f"fraction {fraction} of {n_from} {from_split!r} records rounds to 0; "
                           "use a larger fraction.")
    config = {"src": str(src.resolve()), "from_split": from_split, "to_split": to_split,
              "fraction": fraction, "seed": seed, "stratify": stratify}
    counts = {"moved": sum(moved.values()), "moved_per_class": dict(moved)}
    entry = provenance_entry("split", config, counts=counts)
    h = folder.header
    return _write(out, rows, h, h.expressions, [*h.provenance, entry], h.stats, h.licence, overwrite)


def merge_datasets(srcs: list[Path], out: Path, prefix_ids: bool = False, overwrite: bool = False) -> Path:
    """Concatenate dataset folders with the same expression order and AU set into a new folder.

    Args:
        srcs: the input folders.
        out: the output folder.
        prefix_ids: prefix every id with its input folder's name (``"<name>-<id>"``, sanitised; a numeric
            suffix keeps equal folder names apart). Without it, an id found in two inputs is an error.
        overwrite: replace ``out`` if it exists.

    Raises:
        OrderMismatchError: the inputs' expression or AU orders differ.
        DatasetError: duplicate ids, or AU scales differ.
    """
    srcs, out = [Path(s) for s in srcs], Path(out)
    if not srcs:
        raise ValueError("merge_datasets needs at least one input folder.")
    folders = [DatasetFolder(s) for s in srcs]
    check_output_path(out, srcs, overwrite)
    first = folders[0]
    for f in folders[1:]:
        check_same_order("expression", first.expressions, f.expressions, str(first.path), str(f.path))
        check_same_order("AU", first.au_names, f.au_names, str(first.path), str(f.path))
        a, b = first.header.aus, f.header.aus
        if a is not None and b is not None and a.scale != b.scale:
            raise DatasetError(f"AU scale mismatch: {first.path} uses {a.scale!r}, {f.path} uses "
                               f"{b.scale!r}; rescale one of them first.")
    prefixes = _id_prefixes(srcs) if prefix_ids else [""] * len(srcs)
    seen: dict[str, Path] = {}
    rows: Rows = []
    for f, prefix in zip(folders, prefixes, strict=True):
        for rec, image in records_with_images(f):
            rec.id = prefix + rec.id
            if rec.id in seen:
                raise DatasetError(f"Duplicate record id {rec.id!r}: found in {seen[rec.id]} and in "
                                   f"{f.path}. Pass prefix_ids=True (--prefix-ids) to prefix ids with "
                                   "their folder name.")
            seen[rec.id] = f.path
            rows.append((rec, image))
    merged_from = [{"path": str(f.path.resolve()), "id_prefix": p, "records": len(f),
                    "provenance": f.header.provenance, "stats": f.header.stats}
                   for f, p in zip(folders, prefixes, strict=True)]
    config = {"srcs": [str(s.resolve()) for s in srcs], "prefix_ids": prefix_ids}
    entry = provenance_entry("merge", config, merged_from=merged_from)
    common = {k: v for k, v in first.header.stats.items() if all(f.header.stats.get(k) == v for f in folders)}
    licence = "\n\n".join(dict.fromkeys(f.header.licence for f in folders if f.header.licence))
    return _write(out, rows, first.header, first.expressions, [entry], common, licence, overwrite)


def _id_prefixes(srcs: Sequence[Path]) -> list[str]:
    names = [re.sub(r"[^A-Za-z0-9._-]+", "_", s.resolve().name).lstrip("._-") or "dataset" for s in srcs]
    if len(set(names)) < len(names):
        names = [f"{n}{i}" for i, n in enumerate(names)]
    return [f"{n}-" for n in names]


# ------------------------------------------------------------------------------------------------------------
# validate
# ------------------------------------------------------------------------------------------------------------
