"""Exports of a dataset folder: Hugging Face ImageFolder, one Parquet file, WebDataset tar shards.

All three share :func:`flat_record`, the record as a flat dict with people's column names (``label``,
``label_id``, ``label_probs``, ``AU01``, ...). Every export is staged under a temporary name next to its
target and renamed into place at the end, so a killed export never leaves something that looks finished.
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
from .dataset import DatasetError, DatasetFolder, Record, atomic_write_json, replace_path
from .ops import Rows, check_output_path, chosen_splits, records_with_images
from .report import counts_table

PARQUET_BATCH = 1000  # rows per Parquet row group: bounded memory, small enough for streaming readers


def flat_record(rec: Record, header: DatasetHeader) -> dict[str, Any]:
    """One record as a flat JSON-ready dict, the row of every export.

    Keys: ``id, split, label`` (expression name or None), ``label_id`` (its index in the header's order, or
    None), ``label_probs`` (list in header order, or None), one key per AU column of the header (value or
    None), ``caption, source`` and ``meta`` (the record's extras as a JSON object string, ``"{}"`` when
    empty, so that the column's type never varies between rows).
    """
    row: dict[str, Any] = {
        "id": rec.id,
        "split": rec.split,
        "label": rec.expression,
        "label_id": None if rec.expression is None else header.expressions.index(rec.expression),
        "label_probs": None if rec.label_probs is None else [float(x) for x in rec.label_probs],
    }
    if header.aus is not None:
        values = [None] * len(header.aus) if rec.aus is None else [float(x) for x in rec.aus]
        row.update(zip(header.aus.names, values, strict=True))
    row.update(caption=rec.caption, source=rec.source, meta=json.dumps(rec.meta or {}, sort_keys=True))
    return row


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    """A :func:`flat_record` row for the JSON exports (``metadata.jsonl``, WebDataset ``.json``): a missing
    label or caption becomes ``""`` and a missing ``label_id`` ``-1`` (ClassLabel's "no label").

    Why: ``datasets`` infers column types from the first rows of a metadata file or shard and refuses rows
    or splits whose types differ, so a string column that is all null at the start (no captions in test)
    would make the export unloadable. Parquet keeps real nulls: its schema is explicit.
    """
    fixed = {"label": "", "caption": "", "label_id": -1}
    return {k: fixed[k] if v is None and k in fixed else v for k, v in row.items()}


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
    tmp = out.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{out.name}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_path(tmp, out)


# ------------------------------------------------------------------------------------------------------------
# ImageFolder
# ------------------------------------------------------------------------------------------------------------


def export_imagefolder(src: Path, out: Path, splits: list[str] | None = None,
                       overwrite: bool = False) -> Path:
    """Export to the Hugging Face ``imagefolder`` layout.

    Writes ``out/<split>/<id>.png`` and ``out/<split>/metadata.jsonl`` (one line per image: ``file_name``
    relative to that file, then the :func:`flat_record` keys as :func:`json_row` types them), plus
    ``out/README.md``, a dataset card stub whose YAML header maps each split folder to a split of that name
    (``datasets.load_dataset(str(out))`` loads it).

    Returns:
        ``out``.
    """
    src, out = Path(src), Path(out)
    folder, grouped = _open(src, out, splits, overwrite)
    with _staged_dir(out) as tmp:
        for split, rows in grouped.items():
            (tmp / split).mkdir()
            with open(tmp / split / "metadata.jsonl", "w", encoding="utf-8") as f:
                for rec, image in rows:
                    shutil.copyfile(image, tmp / split / f"{rec.id}.png")
                    line = {"file_name": f"{rec.id}.png", **json_row(flat_record(rec, folder.header))}
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
        (tmp / "README.md").write_text(_dataset_card(folder, list(grouped), out.name), encoding="utf-8")
    return out


def _dataset_card(folder: DatasetFolder, splits: list[str], title: str) -> str:
    h = folder.header
    counts = {s: c for s, c in folder.counts().items() if s in splits}
    yaml = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        yaml += [f"  - split: {split}", f"    path: {split}/*"]
    aus = f"{', '.join(h.aus.names)} (scale {h.aus.scale})" if h.aus is not None else "none"
    stages = [f"- {p.get('stage', '?')} ({p.get('time', '?')}, synfer {p.get('synfer_version', '?')})"
              for p in h.provenance]
    return "\n".join([
        *yaml, "---", "", f"# {title}", "",
        f"Facial-expression dataset exported by synfer {__version__} from the dataset folder "
        f"`{folder.path.name}`.", "",
        "## Labels", "",
        "`label` is the expression name and `label_id` its index below (-1: unlabelled); `label_probs` is "
        "the soft label in this order.", "",
        "| label_id | label |", "|---|---|", *(f"| {i} | {e} |" for i, e in enumerate(h.expressions)), "",
        f"Action-unit columns: {aus}.", "",
        "## Counts", "", "```", counts_table(counts, h.expressions), "```", "",
        "## Licence", "", h.licence or "Not stated in the source dataset's header; check its terms.", "",
        "## Provenance", "", *(stages or ["- (none recorded)"]), "",
    ])


# ------------------------------------------------------------------------------------------------------------
# Parquet
# ------------------------------------------------------------------------------------------------------------

#: Hugging Face ``datasets`` Image feature storage: struct {bytes, path}.
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def parquet_schema(header: DatasetHeader) -> pa.Schema:
    """Schema of :func:`export_parquet`: ``image`` then the :func:`flat_record` columns.

    The ``huggingface`` schema metadata makes ``datasets`` read ``image`` as an Image feature and
    ``label_id`` as a ClassLabel with the header's expression names; other columns keep their Arrow types.
    """
    fields = [("image", IMAGE_TYPE), ("id", pa.string()), ("split", pa.string()), ("label", pa.string()),
              ("label_id", pa.int64()), ("label_probs", pa.list_(pa.float32()))]
    fields += [(name, pa.float32()) for name in (header.aus.names if header.aus is not None else ())]
    fields += [("caption", pa.string()), ("source", pa.string()), ("meta", pa.string())]
    names = list(header.expressions)
    features = {"image": {"_type": "Image"}, "label_id": {"_type": "ClassLabel", "names": names}}
    metadata = {"huggingface": json.dumps({"info": {"features": features}}),
                "synfer_expressions": json.dumps(names)}
    return pa.schema(fields, metadata=metadata)


def export_parquet(src: Path, out_file: Path, splits: list[str] | None = None,
                   overwrite: bool = False) -> Path:
    """Export to one Parquet file: the image as a struct {bytes, path} plus the flat columns.

    The file is written under a temporary name and renamed into place.

    Returns:
        ``out_file``.
    """
    src, out_file = Path(src), Path(out_file)
    folder, grouped = _open(src, out_file, splits, overwrite)
    if out_file.is_dir():
        raise DatasetError(f"{out_file} is a folder; give the path of the Parquet file to write.")
    schema = parquet_schema(folder.header)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{out_file.name}")
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            batch: list[dict[str, Any]] = []
            for rows in grouped.values():
                for rec, image in rows:
                    batch.append({"image": {"bytes": image.read_bytes(), "path": f"{rec.id}.png"},
                                  **flat_record(rec, folder.header)})
                    if len(batch) >= PARQUET_BATCH:
                        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                        batch = []
            if batch or not any(grouped.values()):
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    replace_path(tmp, out_file)
    return out_file


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
    :func:`json_row`) and ``<key>.cls`` (``label_id`` as text, ``-1`` when unlabelled). ``out_dir/info.json``
    records the expression order, AU set and each shard's sample count. Each shard is written under a
    temporary name and renamed; the whole folder is staged and renamed at the end.

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
                name, chunk = f"{split}-{n:06d}.tar", rows[start:start + shard_size]
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
            members = [("png", image.read_bytes()), ("json", json.dumps(row, ensure_ascii=False).encode()),
                       ("cls", str(row["label_id"]).encode())]
            for ext, data in members:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), mtime, 0o644
                tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, path)
