"""Importer for Kaggle's ``fer2013.csv``, optionally relabelled with the FER+ votes of ``fer2013new.csv``.

Source files::

    fer2013.csv      emotion,pixels,Usage     emotion 0-6 (schema.BASIC7 order); pixels: 2304 space-separated
                                              gray values 0-255 (48x48, row-major); Usage: Training /
                                              PublicTest / PrivateTest  ->  train / val / test
    fer2013new.csv   Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,
                     unknown,NF
                     (Microsoft FERPlus): one row per fer2013.csv row, in the same order; an empty image name
                     marks an image FER+ removed (not a face / duplicate)

Record ids: with ``ferplus_csv``, the stem of FER+'s own image name (``fer0000000``), so a fer2013.csv + FER+
import and a FER+ folder import agree on ids. FER+ numbers only the rows it kept (its FER2013Valid folder
starts at fer0028638 although PublicTest starts at row 28709), so its names are *not* fer2013.csv row
numbers past the first removed row. Without ``ferplus_csv`` the id is ``fer2013-{row:05d}``, ``row`` the
0-based data row of fer2013.csv (the only name there is; the prefix keeps it from colliding with a FER+ name
that belongs to another image). Either way ``meta["fer2013_row"]`` holds the row.

Without ``ferplus_csv`` the labels are FER2013's own (expression set BASIC7, one-hot ``label_probs``). With it
the labels come from the FER+ votes through :func:`synfer.importers.ferplus.ferplus_target` (expression set
FERPLUS8), the original FER2013 label is kept in ``meta["fer2013_label"]`` and the votes in ``meta["votes"]``;
rows FER+ removed, and labels it leaves out (unknown / not a face / ambiguous), are left out and counted in
the header stats.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..core.dataset import Record
from ..core.options import ImportOptions
from ..schema import BASIC7, FERPLUS8
from .common import FER2013_LICENCE, BadInputError, start_import, text_file
from .ferplus import LABEL_MODES, ferplus_target

SIDE = 48
N_PIXELS = SIDE * SIDE
USAGE_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FER2013_COLUMNS = ("emotion", "pixels", "Usage")
FERPLUS_COLUMNS = ("Usage", "Image name", *FERPLUS8.names, "unknown", "NF")
_EMOTION_CODES = {str(i): i for i in range(len(BASIC7))}
_IMAGE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,190}\.png$")  # its stem becomes a record id


@dataclass
class Fer2013Row:
    """One usable row of fer2013.csv."""

    row: int  # 0-based data row (the id number)
    line: int  # 1-based line in the file, the header being line 1
    usage: str
    label: int  # BASIC7 index
    pixels: np.ndarray  # (48, 48) uint8


@dataclass
class FerPlusVotes:
    """One usable row of fer2013new.csv."""

    line: int
    usage: str
    name: str  # FER+ image name (fer0000000.png); "" where FER+ removed the image
    votes: tuple[int, ...]  # 10 counts: 8 emotions, unknown, not-a-face


def parse_pixels(text: str) -> tuple[np.ndarray | None, str]:
    """A (48, 48) uint8 array from a ``pixels`` field, or None and what is wrong with it, naming the value."""
    try:
        with warnings.catch_warnings():  # numpy < 2.3 warns (instead of raising) on trailing garbage
            warnings.simplefilter("ignore", DeprecationWarning)
            values = np.fromstring(text, dtype=np.int64, sep=" ")  # C parser: ~5x faster than str.split()
    except ValueError:
        values = None
    if values is not None and values.size == N_PIXELS and values.min() >= 0 and values.max() <= 255:
        return values.astype(np.uint8).reshape(SIDE, SIDE), ""
    # Slow path, only for bad rows: find the exact culprit for the message.
    tokens = text.split()
    for i, tok in enumerate(tokens, start=1):
        try:
            v = int(tok)
        except ValueError:
            return None, f"pixel {i} is {tok[:20]!r}, not an integer"
        if not 0 <= v <= 255:
            return None, f"pixel {i} is {tok[:20]!r}, outside 0-255"
    if len(tokens) == N_PIXELS:  # integers numpy's parser refused but int() reads (e.g. non-ASCII digits)
        return np.array([int(t) for t in tokens], dtype=np.uint8).reshape(SIDE, SIDE), ""
    return None, f"{len(tokens)} pixel values, expected {N_PIXELS} (48x48)"


def _data_rows(path: Path, columns: tuple[str, ...], hint: str) -> Iterator[tuple[int, int, list[str] | str]]:
    """Check a CSV's header, then yield ``(row, line, fields)`` per non-blank data line.

    ``row`` is the 0-based data row, ``line`` the 1-based file line (the header is line 1), ``fields`` the
    values in ``columns`` order (header names matched case-insensitively), or a message for a line with the
    wrong number of fields.
    """
    if not path.is_file():
        raise BadInputError(f"{path}: {hint}")
    with text_file(path) as f:  # UTF-8, a BOM tolerated
        reader = csv.reader(f)
        header = next(reader, [])
        found = {h.strip().lower(): i for i, h in enumerate(header)}
        missing = [c for c in columns if c.lower() not in found]
        if missing:
            raise BadInputError(f"{path}, line 1: header {','.join(header)[:120]!r} lacks column(s) "
                                f"{missing}; expected {','.join(columns)}.")
        index = [found[c.lower()] for c in columns]
        row = 0
        for fields in reader:
            if not fields or all(not x.strip() for x in fields):
                continue  # blank lines are not rows (a trailing one is common)
            if len(fields) != len(header):
                yield row, reader.line_num, f"{path}, line {reader.line_num}: expected {len(header)} " \
                                            f"fields, found {len(fields)}: {','.join(fields)[:80]!r}."
            else:
                yield row, reader.line_num, [fields[i].strip() for i in index]
            row += 1


def parse_fer2013_csv(
    path: Path, splits: list[str]
) -> tuple[dict[int, Fer2013Row], list[tuple[str, str]], int]:
    """Parse fer2013.csv completely (rows of splits not in ``splits`` are counted but not decoded).

    Returns:
        the usable rows by row index, ``(reason, message)`` per bad row (naming file, line and value), and the
        number of data rows.
    """
    rows: dict[int, Fer2013Row] = {}
    problems: list[tuple[str, str]] = []
    n = 0
    hint = "fer2013.csv not found (the Kaggle FER2013 challenge file, header emotion,pixels,Usage)."
    for row, line, fields in _data_rows(path, FER2013_COLUMNS, hint):
        n, where = row + 1, f"{path}, line {line}"
        if isinstance(fields, str):
            problems.append(("malformed_row", fields))
            continue
        emotion, pixel_text, usage = fields
        if usage not in USAGE_SPLITS:
            problems.append(("unknown_usage", f"{where}: Usage {usage[:40]!r} is not one of "
                                              f"{', '.join(USAGE_SPLITS)}."))
            continue
        if USAGE_SPLITS[usage] not in splits:
            continue
        if emotion not in _EMOTION_CODES:
            problems.append(("unknown_label", f"{where}: emotion {emotion[:40]!r} is not a code 0-6 "
                                              f"({', '.join(BASIC7.names)})."))
            continue
        pixels, why = parse_pixels(pixel_text)
        if pixels is None:
            problems.append(("bad_pixels", f"{where}: pixels: {why}."))
            continue
        rows[row] = Fer2013Row(row, line, usage, _EMOTION_CODES[emotion], pixels)
    return rows, problems, n


def parse_ferplus_csv(path: Path) -> tuple[dict[int, FerPlusVotes], list[tuple[int, str, str]], int]:
    """Parse FER+'s fer2013new.csv completely.

    Returns:
        the usable rows by row index, ``(row, reason, message)`` per bad row, and the number of data rows.
    """
    rows: dict[int, FerPlusVotes] = {}
    problems: list[tuple[int, str, str]] = []
    names: dict[str, int] = {}  # image name -> line, to refuse one name for two rows
    n = 0
    hint = "fer2013new.csv not found (it is in github.com/microsoft/FERPlus)."
    for row, line, fields in _data_rows(path, FERPLUS_COLUMNS, hint):
        n, where = row + 1, f"{path}, line {line}"
        if isinstance(fields, str):
            problems.append((row, "malformed_row", fields))
            continue
        usage, name, *counts = fields
        wrong = [(c, v) for c, v in zip(FERPLUS_COLUMNS[2:], counts, strict=True)
                 if not (v.isascii() and v.isdigit())]
        if wrong:
            problems.append((row, "malformed_row", f"{where}: vote count {wrong[0][0]} is "
                                                    f"{wrong[0][1][:20]!r}, not a non-negative integer."))
        elif name and not _IMAGE_NAME_RE.match(name):
            problems.append((row, "malformed_row", f"{where}: Image name {name[:60]!r} should be a PNG file "
                                                    "name such as fer0000000.png."))
        elif name in names:
            problems.append((row, "duplicate_row", f"{where}: Image name {name!r} is already on line "
                                                    f"{names[name]}."))
        else:
            if name:
                names[name] = line
            rows[row] = FerPlusVotes(line, usage, name, tuple(int(v) for v in counts))
    return rows, problems, n


def _to_image(pixels: np.ndarray, mode: str | None, size: int | None) -> Image.Image:
    """PIL image of a (48, 48) uint8 array, converted and resized like common.read_image_checked does."""
    im = Image.fromarray(pixels)  # uint8 2-D -> mode L
    if mode is not None:
        im = im.convert(mode)
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    return im


def import_fer2013_csv(
    csv_path: Path,
    out: Path,
    ferplus_csv: Path | None = None,
    label_mode: str = "majority",
    splits: list[str] | None = None,
    importing: ImportOptions = ImportOptions(),
) -> Path:
    """Import Kaggle's fer2013.csv (optionally with FER+ labels from fer2013new.csv) into a dataset folder.

    Args:
        csv_path: fer2013.csv (header ``emotion,pixels,Usage``).
        out: the dataset folder to write.
        ferplus_csv: FER+'s fer2013new.csv; when given, labels are FER+'s (8 classes), not FER2013's (7).
        label_mode: FER+ label mode (majority | probability | crossentropy | multi_target, see
            :mod:`synfer.importers.ferplus`); only meaningful with ``ferplus_csv``.
        splits: which of train (Training), val (PublicTest), test (PrivateTest) to import (default all).
        importing: how the source is read and the folder written (plain flags work: --skip-bad, --resume).

    Returns:
        the output folder.
    """
    csv_path, out = Path(csv_path), Path(out)
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode {label_mode!r}: choose one of {', '.join(LABEL_MODES)}.")
    if ferplus_csv is None and label_mode != "majority":
        raise ValueError(f"label_mode {label_mode!r} applies to FER+ votes; pass ferplus_csv "
                         "(fer2013new.csv) too.")
    chosen = list(splits) if splits else list(USAGE_SPLITS.values())
    unknown = [s for s in chosen if s not in USAGE_SPLITS.values()]
    if unknown:
        raise ValueError(f"Unknown split(s) {unknown}; fer2013.csv has {', '.join(USAGE_SPLITS.values())}.")
    # Parse both files completely before writing anything: a malformed file fails with nothing created.
    rows, problems, n_rows = parse_fer2013_csv(csv_path, chosen)
    votes: dict[int, FerPlusVotes] = {}
    if ferplus_csv is not None:
        ferplus_csv = Path(ferplus_csv)
        votes, fp_problems, n_fp = parse_ferplus_csv(ferplus_csv)
        if n_fp != n_rows:
            raise BadInputError(
                f"{ferplus_csv} has {n_fp} data rows but {csv_path} has {n_rows}; FER+ labels align with "
                "fer2013.csv row by row, so both must be the complete original files."
            )
        # Only rows that would be imported matter (another split's bad row, or one whose fer2013 row is itself
        # bad and already reported, is not counted).
        problems += [(reason, message) for row, reason, message in fp_problems if row in rows]
        # The Usage columns agree row by row in the real files: a cheap test that the two are aligned.
        for r in rows.values():
            v = votes.get(r.row)
            if v is not None and v.usage != r.usage:
                problems.append(("misaligned_row", f"{ferplus_csv}, line {v.line}: Usage {v.usage!r} but "
                                                    f"{csv_path}, line {r.line} has {r.usage!r}; are the "
                                                    "files in their original order?"))
                votes.pop(r.row)
    expressions = FERPLUS8 if ferplus_csv is not None else BASIC7
    config = {"source": str(csv_path.resolve()),
              "ferplus_csv": str(ferplus_csv.resolve()) if ferplus_csv is not None else None,
              "label_mode": label_mode if ferplus_csv is not None else None, "splits": chosen}
    writer, bad = start_import(out, expressions.names, "import-fer2013", config, problems, importing,
                               licence=FER2013_LICENCE)
    with writer:
        excluded = {s: 0 for s in chosen}  # FER+ label unknown / not a face / ambiguous
        removed = {s: 0 for s in chosen}  # FER+ removed the image (empty "Image name")
        for r in tqdm(rows.values(), desc="fer2013.csv", unit="img", mininterval=1.0):
            split = USAGE_SPLITS[r.usage]
            meta: dict = {"fer2013_label": r.label, "fer2013_row": r.row}
            rid = f"fer2013-{r.row:05d}"
            if ferplus_csv is not None:
                v = votes.get(r.row)
                if v is None:
                    continue  # its FER+ row was bad: already reported above
                if not v.name:
                    removed[split] += 1
                    continue
                probs = ferplus_target(v.votes, label_mode)
                if probs is None:
                    excluded[split] += 1
                    continue
                expression = FERPLUS8.names[max(range(8), key=probs.__getitem__)]
                meta["votes"] = list(v.votes)
                rid = v.name[:-4]  # FER+'s own id (see module docs)
            else:
                probs = [0.0] * len(BASIC7)
                probs[r.label] = 1.0
                expression = BASIC7.names[r.label]
            if writer.has(rid):
                continue  # resume: already written
            writer.add(Record(id=rid, split=split, source=f"fer2013:{csv_path.name}#row{r.row}",
                              expression=expression, label_probs=probs, meta=meta),
                       _to_image(r.pixels, importing.image_mode, importing.image_size))
        writer.header.stats["labels"] = "ferplus" if ferplus_csv is not None else "fer2013"
        if ferplus_csv is not None:
            writer.header.stats["label_mode"] = label_mode
            writer.header.stats["excluded_unknown_or_not_face"] = excluded
            writer.header.stats["excluded_removed_by_ferplus"] = removed
    return out
