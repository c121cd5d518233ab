"""Importer for AffectNet's manually annotated images (Mollahosseini, Hasani and Mahoor, 2017).

Source layout::

    root/Manually_Annotated_file_lists/training.csv     (or root/training.csv)
    root/Manually_Annotated_file_lists/validation.csv   (or root/validation.csv)
    root/Manually_Annotated_Images/<subDirectory_filePath>   (or the images directly under root/)

CSV columns: ``subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,
arousal``. Some copies of validation.csv have no header line; a first line that is not the header is read as
data in that column order.

Expression codes 0-7 are schema.AFFECTNET8 (neutral, happiness, sadness, surprise, fear, disgust, anger,
contempt); 8 None, 9 Uncertain and 10 Non-Face are left out and counted in ``stats["excluded_by_label"]``
(AffectNet's own verdicts, not bad input). ``classes=7`` uses AFFECTNET7 and also leaves out contempt.

Splits: training.csv -> train; validation.csv -> ``val_as`` (default test), because AffectNet's test set was
never released and its public validation set is what papers report as the test set. Hold out a validation
split from train (``synfer split``) if you need one.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from ..core.dataset import Record
from ..core.options import ImportOptions
from ..schema import AFFECTNET7, AFFECTNET8
from .common import BadInputError, UniqueIds, image_for_writer, read_image_checked, start_import

COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
           "expression", "valence", "arousal")
LISTS_DIR = "Manually_Annotated_file_lists"
IMAGES_DIR = "Manually_Annotated_Images"
LEFT_OUT = {8: "none", 9: "uncertain", 10: "non_face"}
_CODES = {str(i): i for i in range(11)}
AFFECTNET_LICENCE = (
    "AffectNet (Mollahosseini et al., IEEE TAC 2017): images and annotations are under the AffectNet "
    "research-only licence agreement (academic, non-commercial use by the signing party); do not "
    "redistribute them, nor this folder's images."
)


@dataclass
class AffectNetRow:
    """One parsed row of training.csv / validation.csv."""

    path: str  # subDirectory_filePath, posix
    box: tuple[int, int, int, int]  # face x, y, width, height
    code: int  # 0-10
    valence: float
    arousal: float
    line: int


def find_csv(root: Path, name: str) -> Path | None:
    """``root/Manually_Annotated_file_lists/<name>``, else ``root/<name>``, else None."""
    for cand in (root / LISTS_DIR / name, root / name):
        if cand.is_file():
            return cand
    return None


def _parse_row(fields: list[str], col: dict[str, int], n_fields: int, where: str,
               line: int) -> AffectNetRow | tuple[str, str]:
    """A row, or ``(reason, message)`` saying what is wrong with it."""
    if len(fields) != n_fields:
        return "malformed_row", f"{where}: expected {n_fields} fields, found {len(fields)}: " \
                                f"{','.join(fields)[:80]!r}."
    path = fields[col["subDirectory_filePath"]].strip().replace("\\", "/")
    if not path or path.startswith("/") or ".." in PurePosixPath(path).parts:  # never read outside root
        return "malformed_row", f"{where}: subDirectory_filePath {path[:80]!r} must be a relative path."
    numbers = [fields[col[c]].strip() for c in (*COLUMNS[1:5], "valence", "arousal")]
    try:
        # Box values are integers in AffectNet; round() also accepts "134.0" from re-saved CSVs.
        box = tuple(int(round(float(x))) for x in numbers[:4])
        valence, arousal = float(numbers[4]), float(numbers[5])
        if not (math.isfinite(valence) and math.isfinite(arousal)):
            raise ValueError
    except (ValueError, OverflowError):
        return "malformed_row", f"{where}: face_x, face_y, face_width, face_height, valence and arousal " \
                                f"must be numbers; found {numbers}."
    code = fields[col["expression"]].strip()
    if code not in _CODES:
        return "unknown_label", f"{where}: expression {code[:20]!r} of {path} is not a code 0-10."
    return AffectNetRow(path, box, _CODES[code], valence, arousal, line)  # type: ignore[arg-type]


def parse_affectnet_csv(path: Path) -> tuple[list[AffectNetRow], list[tuple[str, str]]]:
    """Parse one AffectNet annotation CSV completely.

    Returns:
        the good rows, and ``(reason, message)`` per bad row (message names file, line and value).
    """
    rows: list[AffectNetRow] = []
    problems: list[tuple[str, str]] = []
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f)
        col = {c: i for i, c in enumerate(COLUMNS)}  # header-less files use the documented order
        n_fields = len(COLUMNS)
        for fields in reader:
            if not fields or all(not x.strip() for x in fields):
                continue
            if reader.line_num == 1 and fields[0].strip() == COLUMNS[0]:
                found = {h.strip(): i for i, h in enumerate(fields)}
                missing = [c for c in COLUMNS if c not in found]
                if missing:
                    raise BadInputError(f"{path}, line 1: header lacks column(s) {missing}; expected "
                                        f"{','.join(COLUMNS)}.")
                col, n_fields = {c: found[c] for c in COLUMNS}, len(fields)
                continue
            parsed = _parse_row(fields, col, n_fields, f"{path}, line {reader.line_num}", reader.line_num)
            if isinstance(parsed, tuple):
                problems.append(parsed)
            else:
                rows.append(parsed)
    return rows, problems


def import_affectnet(
    root: Path,
    out: Path,
    classes: int = 8,
    crop: bool = False,
    val_as: str = "test",
    importing: ImportOptions = ImportOptions(),
) -> Path:
    """Import AffectNet's manually annotated images (8 or 7 classes, valence, arousal) into a dataset folder.

    AffectNet's public *validation* set is the benchmark *test* set (the real test set was never released), so
    validation.csv becomes split ``test`` by default (``val_as``).

    Args:
        root: the AffectNet folder (holds Manually_Annotated_file_lists/ and Manually_Annotated_Images/, or
            the CSVs and image folders directly).
        out: the dataset folder to write.
        classes: 8 (AFFECTNET8) or 7 (AFFECTNET7: contempt left out).
        crop: crop each image to its annotated face box (face_x, face_y, face_width, face_height).
        val_as: split name for validation.csv rows: ``test`` (default) or ``val``.
        importing: how the source is read and the folder written (plain flags work: --skip-bad, --resume).

    Returns:
        the output folder.
    """
    root, out = Path(root), Path(out)
    if classes not in (7, 8):
        raise ValueError(f"classes={classes}: AffectNet protocols use 8 (with contempt) or 7 classes.")
    if val_as not in ("val", "test"):
        raise ValueError(f"val_as={val_as!r}: choose 'test' (the benchmark convention) or 'val'.")
    expressions = AFFECTNET8 if classes == 8 else AFFECTNET7
    found = {"train": find_csv(root, "training.csv"), val_as: find_csv(root, "validation.csv")}
    csvs = {split: p for split, p in found.items() if p is not None}
    if not csvs:
        raise BadInputError(f"{root}: neither training.csv nor validation.csv found (looked in {root} and "
                            f"{root / LISTS_DIR}); point to the AffectNet folder.")
    image_root = root / IMAGES_DIR if (root / IMAGES_DIR).is_dir() else root
    # Parse every CSV before writing anything: a malformed file fails with nothing created.
    parsed = {split: parse_affectnet_csv(p) for split, p in csvs.items()}
    problems = [p for _, probs in parsed.values() for p in probs]
    seen: dict[str, str] = {}
    for split, (rows, _) in parsed.items():
        kept = []
        for r in rows:  # one image listed twice would give one id two labels
            where = f"{csvs[split]}, line {r.line}"
            if r.path in seen:
                problems.append(("duplicate_row", f"{where}: {r.path} is already listed at {seen[r.path]}."))
            else:
                seen[r.path] = where
                kept.append(r)
        rows[:] = kept
    config = {"source": str(root.resolve()), "csvs": {s: str(p.resolve()) for s, p in csvs.items()},
              "images": str(image_root.resolve()), "classes": classes, "crop": crop, "val_as": val_as}
    writer, bad = start_import(out, expressions.names, "import-affectnet", config, problems, importing,
                               licence=AFFECTNET_LICENCE, what="bad row(s)")
    with writer:
        ids = UniqueIds()
        excluded: dict[str, dict[str, int]] = {}
        for split, (rows, _) in parsed.items():
            left_out = excluded.setdefault(split, {})
            for r in tqdm(rows, desc=f"AffectNet {split}", unit="img", mininterval=1.0):
                if r.code >= len(expressions):  # 8-10 (and contempt for 7 classes): AffectNet's own verdicts
                    why = LEFT_OUT.get(r.code, "contempt")
                    left_out[why] = left_out.get(why, 0) + 1
                    continue
                rid = ids(f"affectnet-{PurePosixPath(r.path).with_suffix('').as_posix()}")
                if writer.has(rid):
                    continue  # resume: already written
                img_path = image_root / r.path
                try:
                    mode, size = importing.image_mode, importing.image_size
                    image = read_image_checked(img_path, mode, size, box=r.box) if crop else \
                        image_for_writer(img_path, mode, size)
                except BadInputError as e:
                    bad("bad_image", f"{e} (listed in {csvs[split]}, line {r.line})")
                    continue
                probs = [0.0] * len(expressions)
                probs[r.code] = 1.0
                writer.add(Record(id=rid, split=split, source=f"affectnet:{r.path}",
                                  expression=expressions.names[r.code], label_probs=probs,
                                  meta={"valence": r.valence, "arousal": r.arousal, "face_box": list(r.box),
                                        "affectnet_label": r.code}),
                           image)
        writer.header.stats["excluded_by_label"] = excluded
        writer.header.stats["classes"] = classes
    return out
