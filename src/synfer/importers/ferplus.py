"""Importer for the FER+ folder layout (Microsoft FERPlus ``generate_training_data.py`` output).

Source layout::

    FER2013Train/label.csv   name, "(x, y, w, h)", neutral, happiness, surprise, sadness, anger, disgust, fear,
    FER2013Train/*.png                          contempt, unknown, NF      (vote counts of 10 taggers)
    FER2013Valid/...  FER2013Test/...
    fer2013_original_labels.csv   (optional) image, folder, fer2013_label, fer2013_class

Label modes (Barsoum et al., ICMI 2016, and the FERPlus reference code):
    * all modes first drop single votes (a count of 1 becomes 0: outlier removal);
    * ``majority``: one-hot of the arg-max if it holds more than half of the remaining votes, else unknown;
    * ``probability`` / ``crossentropy``: the top vote groups are taken in turn until they cover 75% of the
      votes or three emotions are taken (stopping at unknown/NF); the example is unknown if the taken votes are
      at most half of all votes or more than three emotions tie in; the label is the taken votes normalised.
      The two modes share this target and differ only in training (sample a hard label from it each epoch vs
      soft cross-entropy); the mode is recorded in the header for ``train-fer``;
    * ``multi_target``: every emotion with at least 30% of the votes, normalised; unknown if they cover at most
      half of the votes.
    Images whose label is unknown or not-a-face (the arg-max falls on those columns) are left out, as in FER+.
    ``label_probs`` holds the 8 emotion entries renormalised (for multi-target, mass on unknown/NF is dropped).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..core.dataset import Record
from ..core.options import ImportOptions
from ..schema import FERPLUS8
from .common import FER2013_LICENCE, BadInputError, image_for_writer, start_import, text_file

LABEL_MODES = ("majority", "probability", "crossentropy", "multi_target")
SPLIT_FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
VOTE_COLUMNS = FERPLUS8.names + ("unknown", "not_face")


@dataclass
class FerPlusRow:
    """One parsed row of a FER+ label.csv."""

    name: str
    box: tuple[int, int, int, int]
    votes: tuple[int, ...]  # 10 counts, in VOTE_COLUMNS order
    line: int


def ferplus_target(votes: tuple[int, ...] | list[int], mode: str) -> list[float] | None:
    """The FER+ training target of one image's 10 vote counts, or None when the image is left out.

    Args:
        votes: counts for the 8 emotions, unknown, not-a-face.
        mode: one of :data:`LABEL_MODES`.

    Returns:
        the 8-emotion distribution (sums to 1), or None for unknown / not-a-face / ambiguous images.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"Unknown FER+ label mode {mode!r}; choose one of {', '.join(LABEL_MODES)}.")
    raw = [0 if c <= 1 else int(c) for c in votes]  # outlier removal: single votes are dropped
    total = sum(raw)
    if total == 0:
        return None
    taken = [0] * len(raw)
    if mode == "majority":
        peak = max(raw)
        if peak <= 0.5 * total:
            return None
        taken[raw.index(peak)] = peak
    elif mode in ("probability", "crossentropy"):
        left, covered, count, valid = list(raw), 0, 0, True
        while covered < 0.75 * total and count < 3 and valid:
            peak = max(left)
            for i, c in enumerate(left):
                if c != peak:
                    continue
                taken[i], left[i] = peak, 0
                covered += peak
                count += 1
                if i >= 8:  # unknown / not-a-face among the top groups: stop here
                    valid = False
                    if sum(taken) > peak:  # emotions came first: keep them, drop the unknown/NF column
                        taken[i] = 0
                        count -= 1
                    break
        if sum(taken) <= 0.5 * total or count > 3:
            return None
    else:  # multi_target
        taken = [c if c >= 0.3 * total else 0 for c in raw]
        if sum(taken) <= 0.5 * total:
            return None
    best = taken.index(max(taken))
    if best >= 8:  # unknown or not a face
        return None
    emotions = taken[:8]
    s = float(sum(emotions))
    return [c / s for c in emotions]


def parse_label_csv(path: Path) -> tuple[list[FerPlusRow], list[tuple[str, str]]]:
    """Parse a FER+ ``label.csv``.

    Returns:
        the good rows, and ``(reason, message)`` for each malformed row (message names file and line).
    """
    rows: list[FerPlusRow] = []
    problems: list[tuple[str, str]] = []
    seen: dict[str, int] = {}  # image name -> line of its first row
    if not path.is_file():
        raise BadInputError(f"{path}: label file not found; a FER+ split folder holds label.csv next to its PNGs.")
    with text_file(path) as f:
        for line_no, fields in enumerate(csv.reader(f), start=1):
            if not fields or all(not x.strip() for x in fields):
                continue
            where = f"{path}, line {line_no}"
            if len(fields) != 12:
                problems.append(("malformed_row", f"{where}: expected 12 fields (name, box, 10 vote counts), "
                                                   f"found {len(fields)}: {','.join(fields)[:80]!r}."))
                continue
            name = fields[0].strip()
            try:
                box = tuple(int(x) for x in fields[1].strip().strip("()").split(","))
                votes = tuple(int(x) for x in fields[2:])
                if len(box) != 4 or min(votes) < 0:
                    raise ValueError
            except ValueError:
                problems.append(("malformed_row", f"{where}: box must be \"(x, y, w, h)\" and votes non-negative "
                                                   f"integers; found {','.join(fields)[:80]!r}."))
                continue
            if not name.lower().endswith(".png") or "/" in name or "\\" in name:
                problems.append(("malformed_row", f"{where}: image name {name!r} should be a PNG file name."))
                continue
            if name in seen:
                problems.append(("duplicate_row", f"{where}: {name} is already listed on line {seen[name]}; "
                                                   "keep one row per image."))
                continue
            seen[name] = line_no
            rows.append(FerPlusRow(name, box, votes, line_no))  # type: ignore[arg-type]
    return rows, problems


def _original_labels(source: Path) -> dict[str, int]:
    """FER2013 original label per image from ``fer2013_original_labels.csv`` when present (-1: unknown)."""
    p = source / "fer2013_original_labels.csv"
    if not p.is_file():
        return {}
    out: dict[str, int] = {}
    with text_file(p) as f:
        for row in csv.DictReader(f):
            try:
                out[row["image"]] = int(row["fer2013_label"])
            except (KeyError, ValueError, TypeError) as e:
                raise BadInputError(f"{p}: malformed row {row!r}; expected columns image, folder, fer2013_label.") \
                    from e
    return out


def import_ferplus(
    source: Path,
    out: Path,
    label_mode: str = "majority",
    splits: list[str] | None = None,
    importing: ImportOptions = ImportOptions(),
) -> Path:
    """Import a FER+ folder (FER2013Train/Valid/Test with label.csv) into a dataset folder.

    Args:
        source: the FER+ root (holds FER2013Train/, FER2013Valid/, FER2013Test/).
        out: the dataset folder to write.
        label_mode: majority | probability | crossentropy | multi_target (see module docs).
        splits: which of train, val, test to import (default all present).
        importing: how the source is read and the folder written (plain flags work: --skip-bad, --resume).

    Returns:
        the output folder.
    """
    source, out = Path(source), Path(out)
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode {label_mode!r}: choose one of {', '.join(LABEL_MODES)}.")
    chosen = splits or [s for s, d in SPLIT_FOLDERS.items() if (source / d).is_dir()]
    if not chosen:
        raise BadInputError(
            f"{source}: no FER+ split folders found (expected {', '.join(SPLIT_FOLDERS.values())} with label.csv); "
            "point to the folder that FERPlus's generate_training_data.py wrote."
        )
    unknown = [s for s in chosen if s not in SPLIT_FOLDERS]
    if unknown:
        raise ValueError(f"Unknown split(s) {unknown}; FER+ has {', '.join(SPLIT_FOLDERS)}.")
    # Parse every label file before writing anything: a malformed file fails with nothing created.
    parsed = {s: parse_label_csv(source / SPLIT_FOLDERS[s] / "label.csv") for s in chosen}
    all_problems = [p for _, probs in parsed.values() for p in probs]
    original = _original_labels(source)
    config = {"source": str(source.resolve()), "label_mode": label_mode, "splits": chosen}
    writer, bad = start_import(out, FERPLUS8.names, "import-ferplus", config, all_problems, importing,
                               licence=FER2013_LICENCE)
    with writer:
        excluded = writer.header.stats.setdefault("excluded_unknown_or_not_face", {})
        for split in chosen:
            rows, _ = parsed[split]
            folder = SPLIT_FOLDERS[split]
            n_excluded = 0
            for row in tqdm(rows, desc=f"FER+ {split}", unit="img", mininterval=1.0):
                probs = ferplus_target(row.votes, label_mode)
                if probs is None:
                    n_excluded += 1
                    continue
                rid = Path(row.name).stem
                if writer.has(rid):
                    continue  # resume: already written
                img_path = source / folder / row.name
                try:
                    image = image_for_writer(img_path, importing.image_mode, importing.image_size)
                except BadInputError as e:
                    bad("bad_image", f"{e} (listed in {source / folder / 'label.csv'}, line {row.line})")
                    continue
                meta = {"votes": list(row.votes)}
                if row.box != (0, 0, 48, 48):
                    meta["face_box"] = list(row.box)
                if row.name in original:
                    meta["fer2013_label"] = original[row.name]
                writer.add(
                    Record(id=rid, split=split, source=f"ferplus:{folder}/{row.name}",
                           expression=FERPLUS8.names[max(range(8), key=probs.__getitem__)],
                           label_probs=probs, meta=meta),
                    image,
                )
            excluded[split] = n_excluded
        writer.header.stats["label_mode"] = label_mode
    return out
