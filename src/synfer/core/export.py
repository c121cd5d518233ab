"""Exports of a dataset folder that the standard readers load with no extra code.

* ImageFolder (:func:`export_imagefolder`): ``<split>/<NN_expression>/<id>.png`` with a ``metadata.parquet`` per
  split, so that ``torchvision.datasets.ImageFolder`` and ``datasets.load_dataset`` agree on every class index;
* Parquet (:func:`export_parquet`): Hugging Face's ``data/<split>-NNNNN-of-NNNNN.parquet`` layout, images embedded;
* WebDataset (:func:`export_webdataset`): ``<split>-NNNNNN.tar`` shards of ``.png``, ``.json``, ``.cls``, ``.txt``.

Split names are Hugging Face's (``val`` is written as ``validation``). Every export shares :func:`flat_record`, the
record as a flat dict with people's column names: ``label`` is the class index in the folder's expression order (a
``ClassLabel`` where the format can say so; -1 unlabelled), ``label_name`` its name, one column per AU (``AU01``
...) with ``aus_kind`` saying whether they were measured on the face or are the targets it was generated for, and
``has_aus`` marking faces with AU values. Every export is staged under a temporary name next to its target and
renamed into place at the end, so a killed export never leaves something that looks finished.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..schema import DatasetHeader
from . import __version__
from .dataset import (
    MARKER_FILE,
    DatasetError,
    DatasetFolder,
    FolderLock,
    Record,
    atomic_write_json,
    mark_as_ours,
    replace_path,
)
from .ops import Rows, check_output_path, chosen_splits, records_with_images
from .report import counts_table

PARQUET_BATCH = 1000  # rows per Parquet row group: bounded memory, small enough for streaming readers
#: synfer split name -> the name Hugging Face's readers give that split.
HF_SPLITS = {"val": "validation"}
#: Record sources whose AU values are the targets a face was generated (or edited) for, not measurements.
TARGET_AU_SOURCES = ("synfer-generate", "synfer-edit")
UNLABELLED_DIR = "unlabelled"
#: Hugging Face ``datasets`` Image feature storage: struct {bytes, path}.
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def hf_split(split: str) -> str:
    """The split's name in the exports (Hugging Face's: ``val`` -> ``validation``)."""
    return HF_SPLITS.get(split, split)


def class_dir(index: int, name: str, n_classes: int) -> str:
    """ImageFolder class folder ``NN_name``: sorted by name (torchvision's rule) they fall in the header's order."""
    return f"{index:0{max(2, len(str(n_classes - 1)))}d}_{name}"


def aus_kind(rec: Record) -> str | None:
    """``target`` for AUs a face was generated or edited for, ``measured`` for an estimator's, None without AUs."""
    if rec.aus is None:
        return None
    return "target" if rec.source in TARGET_AU_SOURCES else "measured"


def flat_record(rec: Record, header: DatasetHeader) -> dict[str, Any]:
    """One record as a flat JSON-ready dict, the row of every export.

    Keys: ``id, split`` (synfer's name), ``label`` (index in the header's order, -1 when unlabelled),
    ``label_name`` (or None), ``label_probs`` (list in header order, or None), with an AU set one key per AU column
    (value or None) then ``aus_kind`` (:func:`aus_kind`) and ``has_aus``; ``caption, source`` and ``meta`` (the
    record's extras as a JSON object string, ``"{}"`` when empty, so that the column's type never varies).
    """
    row: dict[str, Any] = {
        "id": rec.id,
        "split": rec.split,
        "label": -1 if rec.expression is None else header.expressions.index(rec.expression),
        "label_name": rec.expression,
        "label_probs": None if rec.label_probs is None else [float(x) for x in rec.label_probs],
    }
    if header.aus is not None:
        values = [None] * len(header.aus) if rec.aus is None else [float(x) for x in rec.aus]
        row.update(zip(header.aus.names, values, strict=True))
        row.update(aus_kind=aus_kind(rec), has_aus=rec.aus is not None)
    row.update(caption=rec.caption, source=rec.source, meta=json.dumps(rec.meta or {}, sort_keys=True))
    return row


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    """A :func:`flat_record` row for WebDataset's ``.json``: a missing label name, caption or AU kind becomes ``""``.

    Why: ``datasets`` infers column types from the first rows of a shard and refuses rows or splits whose types
    differ, so a string column that is all null at the start (no captions in test) would make it unloadable.
    Parquet keeps real nulls: its schema is explicit.
    """
    fixed = {"label_name": "", "caption": "", "aus_kind": ""}
    return {k: fixed[k] if v is None and k in fixed else v for k, v in row.items()}


def row_schema(header: DatasetHeader, image: bool) -> pa.Schema:
    """Arrow schema of the Parquet exports' rows (``image`` first if ``image``, else ImageFolder's ``file_name``).

    The ``huggingface`` schema metadata makes ``datasets`` read ``image`` as an Image feature and ``label`` as a
    ClassLabel with the header's expression names, in the header's order; other columns keep their Arrow types.
    """
    first = ("image", IMAGE_TYPE) if image else ("file_name", pa.string())
    fields = [first, ("id", pa.string()), ("split", pa.string()), ("label", pa.int64()),
              ("label_name", pa.string()), ("label_probs", pa.list_(pa.float32()))]
    if header.aus is not None:
        fields += [(name, pa.float32()) for name in header.aus.names]
        fields += [("aus_kind", pa.string()), ("has_aus", pa.bool_())]
    fields += [("caption", pa.string()), ("source", pa.string()), ("meta", pa.string())]
    names = list(header.expressions)
    features = {"label": {"_type": "ClassLabel", "names": names}}
    if image:
        features["image"] = {"_type": "Image"}
    metadata = {"huggingface": json.dumps({"info": {"features": features}}),
                "synfer_expressions": json.dumps(names)}
    return pa.schema(fields, metadata=metadata)


def _image_bytes(path: Path) -> bytes:
    """An image's PNG bytes, checked to decode: an export hands them to other tools, which would fail far from here
    (or train on garbage) on a truncated file."""
    from PIL import Image

    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: the image does not decode ({type(e).__name__}: {e}); nothing was exported. "
                           "Run `synfer validate` on the folder to list every such file.") from e
    return data


def _open(src: Path, out: Path, splits: Sequence[str] | None,
          overwrite: bool) -> tuple[DatasetFolder, dict[str, Rows]]:
    """Read ``src``, check ``out``, and group the chosen splits' records (with image paths) by split."""
    folder = DatasetFolder(src)
    check_output_path(out, [folder.path], overwrite)
    grouped: dict[str, Rows] = {s: [] for s in chosen_splits(folder, splits)}
    for rec, image in records_with_images(folder):
        if rec.split in grouped:
            grouped[rec.split].append((rec, image))
    return folder, grouped


@contextmanager
def _staged_dir(out: Path) -> Iterator[Path]:
    """A temporary folder next to ``out``, renamed to ``out`` on success and deleted on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for left in out.parent.glob(f".tmp-????????-{out.name}"):  # staging folders of killed exports to ``out``
        if (left / MARKER_FILE).is_file() and FolderLock(left).abandoned():
            shutil.rmtree(left, ignore_errors=True)
    tmp = out.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{out.name}")
    tmp.mkdir()
    mark_as_ours(tmp, "export")  # a later --overwrite may replace it
    lock = FolderLock(tmp).acquire()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    lock.release()
    replace_path(tmp, out)


def _write_parquet(path: Path, rows: Iterator[dict[str, Any]], schema: pa.Schema) -> None:
    """Rows to one Parquet file in row groups of :data:`PARQUET_BATCH` (an empty file keeps the schema)."""
    with pq.ParquetWriter(path, schema) as writer:
        batch: list[dict[str, Any]] = []
        wrote = False
        for row in rows:
            batch.append(row)
            if len(batch) >= PARQUET_BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch, wrote = [], True
        if batch or not wrote:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))


def _dataset_card(folder: DatasetFolder, splits: dict[str, str], title: str, layout: list[str]) -> str:
    """README.md with the YAML header ``datasets`` reads (``splits``: export split -> its file pattern)."""
    h = folder.header
    yaml = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split, pattern in splits.items():
        yaml += [f"  - split: {split}", f"    path: {pattern}"]
    counts = {hf_split(s): c for s, c in folder.counts().items() if hf_split(s) in splits}
    aus = f"{', '.join(h.aus.names)} (scale {h.aus.scale})" if h.aus is not None else "none"
    stages = [f"- {p.get('stage', '?')} ({p.get('time', '?')}, synfer {p.get('synfer_version', '?')})"
              for p in h.provenance]
    return "\n".join([
        *yaml, "---", "", f"# {title}", "",
        f"Facial-expression dataset exported by synfer {__version__} from the dataset folder "
        f"`{folder.path.name}`.", "", *layout, "",
        "## Labels", "",
        "`label` is the class index below (a `ClassLabel` in this order; -1: unlabelled), `label_name` its name "
        "and `label_probs` the soft label in this order.", "",
        "| label | label_name |", "|---|---|", *(f"| {i} | {e} |" for i, e in enumerate(h.expressions)), "",
        f"Action-unit columns: {aus}. `aus_kind` says what they are: `measured` (estimated on the face) or "
        "`target` (the AUs the face was generated for); `has_aus` is false where a face has none (its AU columns "
        "are null).", "",
        "## Counts", "", "```", counts_table(counts, [*h.expressions]), "```", "",
        "## Licence", "", h.licence or "Not stated in the source dataset's header; check its terms.", "",
        "## Provenance", "", *(stages or ["- (none recorded)"]), "",
    ])


# ------------------------------------------------------------------------------------------------------------
# ImageFolder
# ------------------------------------------------------------------------------------------------------------


def export_imagefolder(src: Path, out: Path, splits: list[str] | None = None,
                       overwrite: bool = False) -> Path:
    """Export to the ImageFolder layout that torchvision and Hugging Face ``datasets`` both read.

    Writes ``out/<split>/<NN_expression>/<id>.png`` (:func:`class_dir`: a folder for every expression of the
    header, so class indices never shift; unlabelled faces under ``unlabelled/``), ``out/<split>/metadata.parquet``
    (``file_name`` relative to the split folder, then the :func:`flat_record` columns, ``label`` a ClassLabel) and
    ``out/README.md``, the dataset card whose YAML header names the splits. ``datasets.load_dataset(str(out))`` and
    ``torchvision.datasets.ImageFolder(out / split)`` then give every face the same class index, the header's.

    Args:
        src: the dataset folder to export (read only).
        out: the export folder to write (must not exist, be empty, or be replaced with ``overwrite``).
        splits: only these splits (default all), e.g. ``train,val``.
        overwrite: replace ``out`` if it exists.

    Returns:
        ``out``.
    """
    src, out = Path(src), Path(out)
    folder, grouped = _open(src, out, splits, overwrite)
    exprs = folder.header.expressions
    dirs = {e: class_dir(i, e, len(exprs)) for i, e in enumerate(exprs)}
    with _staged_dir(out) as tmp:
        for split, rows in grouped.items():
            base = tmp / hf_split(split)
            for d in dirs.values():
                (base / d).mkdir(parents=True)

            def lines(base: Path = base, rows: Rows = rows) -> Iterator[dict[str, Any]]:
                for rec, image in rows:
                    name = f"{dirs.get(rec.expression, UNLABELLED_DIR)}/{rec.id}.png"
                    (base / name).parent.mkdir(exist_ok=True)
                    (base / name).write_bytes(_image_bytes(image))
                    yield {"file_name": name, **flat_record(rec, folder.header)}

            _write_parquet(base / "metadata.parquet", lines(), row_schema(folder.header, image=False))
        layout = ["Layout: `<split>/<NN_expression>/<id>.png` and `<split>/metadata.parquet`. The `NN_` prefix is "
                  "the class index, so `torchvision.datasets.ImageFolder(<split>)` numbers classes as `label` does "
                  "(pass `allow_empty=True` where a split lacks a class)."]
        card = _dataset_card(folder, {hf_split(s): f"{hf_split(s)}/**" for s in grouped}, out.name, layout)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------------------------------
# Parquet
# ------------------------------------------------------------------------------------------------------------


def export_parquet(src: Path, out: Path, splits: list[str] | None = None, overwrite: bool = False,
                   rows_per_file: int = 50000) -> list[Path]:
    """Export to Hugging Face's Parquet layout: ``out/data/<split>-NNNNN-of-NNNNN.parquet`` (``rows_per_file``
    rows each; the image as a struct {bytes, path} then the :func:`flat_record` columns, ``label`` a ClassLabel)
    and ``out/README.md``, the dataset card. ``datasets.load_dataset(str(out))`` and
    ``load_dataset("parquet", data_dir=str(out))`` both give one split per source split.

    Args:
        src: the dataset folder to export (read only).
        out: the export folder to write (must not exist, be empty, or be replaced with ``overwrite``).
        splits: only these splits (default all), e.g. ``train,val``.
        overwrite: replace ``out`` if it exists.
        rows_per_file: faces per Parquet file (a split with more is written as several files).

    Returns:
        the Parquet files, in split then file order.
    """
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be at least 1; got {rows_per_file}.")
    src, out = Path(src), Path(out)
    if out.suffix == ".parquet":
        raise DatasetError(f"{out}: export-parquet writes a folder (data/<split>-*.parquet and README.md); give a "
                           "folder path.")
    folder, grouped = _open(src, out, splits, overwrite)
    schema = row_schema(folder.header, image=True)
    files: list[str] = []
    with _staged_dir(out) as tmp:
        (tmp / "data").mkdir()
        for split, rows in grouped.items():
            chunks = [rows[i:i + rows_per_file] for i in range(0, len(rows), rows_per_file)] or [[]]
            for n, chunk in enumerate(chunks):
                name = f"data/{hf_split(split)}-{n:05d}-of-{len(chunks):05d}.parquet"
                _write_parquet(tmp / name, ({"image": {"bytes": _image_bytes(image), "path": f"{rec.id}.png"},
                                             **flat_record(rec, folder.header)} for rec, image in chunk), schema)
                files.append(name)
        layout = ["Layout: `data/<split>-NNNNN-of-NNNNN.parquet`, the PNG bytes embedded in `image`."]
        card = _dataset_card(folder, {hf_split(s): f"data/{hf_split(s)}-*" for s in grouped}, out.name, layout)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return [out / f for f in files]


# ------------------------------------------------------------------------------------------------------------
# WebDataset
# ------------------------------------------------------------------------------------------------------------


def webdataset_key(record_id: str) -> str:
    """Sample key of a record: its id with dots replaced by ``_`` (WebDataset splits at the first dot)."""
    return record_id.replace(".", "_")


def export_webdataset(src: Path, out_dir: Path, shard_size: int = 10000, splits: list[str] | None = None,
                      overwrite: bool = False) -> list[Path]:
    """Export to WebDataset tar shards ``out_dir/<split>-000000.tar``.

    Each sample has ``<key>.png`` (the image bytes), ``<key>.json`` (:func:`flat_record` typed by
    :func:`json_row`), ``<key>.cls`` (``label`` as text, ``-1`` when unlabelled) and ``<key>.txt`` (the caption,
    empty without one). ``out_dir/info.json`` records the expression order, AU set and each shard's sample count.
    Each shard is written under a temporary name and renamed; the whole folder is staged and renamed at the end.

    Args:
        src: the dataset folder to export (read only).
        out_dir: the folder of shards to write (must not exist, be empty, or be replaced with ``overwrite``).
        shard_size: faces per tar shard.
        splits: only these splits (default all), e.g. ``train,val``.
        overwrite: replace ``out_dir`` if it exists.

    Returns:
        the shard paths, in split then shard order.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1; got {shard_size}.")
    src, out_dir = Path(src), Path(out_dir)
    folder, grouped = _open(src, out_dir, splits, overwrite)
    keys: dict[str, str] = {}
    for rows in grouped.values():
        for rec, _ in rows:
            key = webdataset_key(rec.id)
            if key in keys:
                raise DatasetError(f"Records {keys[key]!r} and {rec.id!r} map to the same WebDataset key "
                                   f"{key!r} (dots become '_'); rename one of them first.")
            keys[key] = rec.id
    shards: dict[str, int] = {}
    mtime = int(time.time())
    with _staged_dir(out_dir) as tmp:
        for split, rows in grouped.items():
            for n, start in enumerate(range(0, len(rows), shard_size)):
                name, chunk = f"{hf_split(split)}-{n:06d}.tar", rows[start:start + shard_size]
                _write_shard(tmp / name, chunk, folder.header, mtime)
                shards[name] = len(chunk)
        h = folder.header
        atomic_write_json(tmp / "info.json", {
            "format": "synfer-webdataset", "synfer_version": __version__,
            "source": str(folder.path.resolve()), "expressions": list(h.expressions),
            "aus": h.aus.to_dict() if h.aus is not None else None, "licence": h.licence, "shards": shards,
        })
    return [out_dir / name for name in shards]


def _write_shard(path: Path, rows: Rows, header: DatasetHeader, mtime: int) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for rec, image in rows:
            key = webdataset_key(rec.id)
            row = json_row(flat_record(rec, header))
            members = [("png", _image_bytes(image)), ("json", json.dumps(row, ensure_ascii=False).encode()),
                       ("cls", str(row["label"]).encode()), ("txt", (rec.caption or "").encode())]
            for ext, data in members:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), mtime, 0o644
                tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, path)
