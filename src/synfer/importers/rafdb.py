"""Importer for RAF-DB basic (Real-world Affective Faces, Li, Deng and Du, CVPR 2017).

Source layout (the ``basic`` folder of the RAF-DB release; its parent is accepted too)::

    basic/EmoLabel/list_patition_label.txt    "train_00001.jpg 5" per line: image name, label 1-7
    basic/Image/aligned/train_00001_aligned.jpg   100x100 aligned faces (the usual benchmark input)
    basic/Image/original/train_00001.jpg          the original photos

Labels 1-7 are Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral (schema.RAFDB7, kept in that order
so label index = code - 1). The split is the name's prefix: ``train_`` -> train, ``test_`` -> test (RAF-DB has
no validation split). Record ids are ``rafdb-<name without extension>``; JPEGs are written as PNG.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..core.dataset import Record
from ..core.options import ImportOptions
from ..schema import RAFDB7
from .common import BadInputError, image_for_writer, start_import

LABEL_FILE = "EmoLabel/list_patition_label.txt"  # sic: RAF-DB spells it "patition"
RAFDB_LICENCE = (
    "RAF-DB (Li, Deng and Du, CVPR 2017): images and labels are under the RAF-DB research-only release "
    "agreement (non-commercial research use by the signing party); do not redistribute them, nor this "
    "folder's images."
)
_CODES = {str(i): i - 1 for i in range(1, len(RAFDB7) + 1)}  # "1".."7" -> RAFDB7 index
_NAME_RE = re.compile(r"^(train|test)_[A-Za-z0-9_-]+\.(jpg|jpeg|png)$", re.IGNORECASE)


@dataclass
class RafRow:
    """One parsed line of list_patition_label.txt."""

    name: str  # "train_00001.jpg"
    split: str
    label: int  # RAFDB7 index (code - 1)
    line: int


def find_basic_folder(root: Path) -> Path:
    """The RAF-DB ``basic`` folder: ``root`` itself or ``root/basic``.

    Raises:
        BadInputError: neither holds the label file (the message says what was looked for).
    """
    for cand in (root, root / "basic"):
        if (cand / LABEL_FILE).is_file():
            return cand
    raise BadInputError(f"{root}: no {LABEL_FILE} here or in {root / 'basic'}; point to RAF-DB's 'basic' "
                        "folder (the one holding EmoLabel/ and Image/).")


def parse_partition_labels(path: Path) -> tuple[list[RafRow], list[tuple[str, str]]]:
    """Parse ``list_patition_label.txt`` completely.

    Returns:
        the good rows, and ``(reason, message)`` per bad line (message names file, line and value).
    """
    rows: list[RafRow] = []
    problems: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for line_no, text in enumerate(f, start=1):
            fields = text.split()
            if not fields:
                continue
            where = f"{path}, line {line_no}"
            if len(fields) != 2 or not _NAME_RE.match(fields[0]):
                problems.append(("malformed_row", f"{where}: expected '<train_|test_ image name> <label "
                                                   f"1-7>', found {text.strip()[:80]!r}."))
                continue
            name, code = fields
            if code not in _CODES:
                problems.append(("unknown_label", f"{where}: label {code[:20]!r} of {name} is not a code 1-7 "
                                                   f"({', '.join(RAFDB7.names)})."))
                continue
            if name in seen:
                problems.append(("duplicate_row", f"{where}: {name} is already listed on line {seen[name]}."))
                continue
            seen[name] = line_no
            rows.append(RafRow(name, name.split("_", 1)[0].lower(), _CODES[code], line_no))
    return rows, problems


def import_rafdb(
    root: Path,
    out: Path,
    aligned: bool = True,
    importing: ImportOptions = ImportOptions(),
) -> Path:
    """Import RAF-DB basic (7 expressions, train/test) into a dataset folder.

    Args:
        root: RAF-DB's ``basic`` folder, or a folder that contains ``basic/``.
        out: the dataset folder to write.
        aligned: use the 100x100 aligned faces (``Image/aligned``, the usual benchmark input); False uses the
            original photos (``Image/original``).
        importing: how the source is read and the folder written (plain flags work: --skip-bad, --resume).

    Returns:
        the output folder.
    """
    root, out = Path(root), Path(out)
    basic = find_basic_folder(root)
    image_dir = basic / "Image" / ("aligned" if aligned else "original")
    if not image_dir.is_dir():
        kind = "aligned" if aligned else "original"
        raise BadInputError(f"{image_dir}: folder not found; unzip RAF-DB's {kind} images there, or pass "
                            f"--aligned {'false' if aligned else 'true'}.")
    # Parse the label file completely before writing anything: a malformed file fails with nothing created.
    label_path = basic / LABEL_FILE
    rows, problems = parse_partition_labels(label_path)
    config = {"source": str(basic.resolve()), "aligned": aligned}
    writer, bad = start_import(out, RAFDB7.names, "import-rafdb", config, problems, importing,
                               licence=RAFDB_LICENCE, what="bad line(s)")
    with writer:
        for row in tqdm(rows, desc="RAF-DB", unit="img", mininterval=1.0):
            stem, suffix = row.name.rsplit(".", 1)
            rid = f"rafdb-{stem}"
            if writer.has(rid):
                continue  # resume: already written
            file_name = f"{stem}_aligned.{suffix}" if aligned else row.name
            try:
                image = image_for_writer(image_dir / file_name, importing.image_mode, importing.image_size)
            except BadInputError as e:
                bad("bad_image", f"{e} (listed in {label_path}, line {row.line})")
                continue
            probs = [0.0] * len(RAFDB7)
            probs[row.label] = 1.0
            source = f"rafdb:{image_dir.relative_to(basic).as_posix()}/{file_name}"
            writer.add(Record(id=rid, split=row.split, source=source, expression=RAFDB7.names[row.label],
                              label_probs=probs, meta={"rafdb_label": row.label + 1}),
                       image)
        writer.header.stats["aligned"] = aligned
    return out
