"""The dataset folder: the one contract between synfer's stages.

(One file past 400 lines on purpose: the reader and the writer share the record schema, the validation and the
atomic-write rules, and must change together.)

Layout::

    dataset.json              header (schema.DatasetHeader): expression order, AU order + scale, provenance, stats
    records-00000.parquet     one row per image; more shards as the writer flushes (records-<tag>-00000.parquet
                              for parallel writers)
    images/<id>.png           the image of each record

Atomicity: every file is written under a temporary name in the same folder and renamed into place. Images are
written before the shard that references them, so a record never points at a missing image; a killed writer leaves
at most some orphan images (overwritten on resume) and a header with ``complete: false`` (the reader refuses it
unless asked, and ``DatasetWriter(..., resume=True)`` carries on, skipping ids already written).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ..schema import AUSet, DatasetHeader, check_same_order

HEADER_FILE = "dataset.json"
IMAGES_DIR = "images"
#: The writer's lock in an output folder (see :class:`FolderLock`).
LOCK_FILE = ".synfer-lock"
#: Written into every output folder synfer makes that has no other sign of it (exports, run folders).
MARKER_FILE = ".synfer"
#: Files that show synfer made a folder, so that ``--overwrite`` may replace it.
_OURS = (HEADER_FILE, MARKER_FILE, "metrics.jsonl", "train_config.json")
_SHARD_RE = re.compile(r"^records(?:-([A-Za-z0-9_]+))?-(\d{5})\.parquet$|^records\.parquet$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
SPLIT_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # split names: train, val, test, ...

RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.string()),
        ("split", pa.string()),
        ("source", pa.string()),
        ("expression", pa.string()),
        ("label_probs", pa.list_(pa.float32())),
        ("aus", pa.list_(pa.float32())),
        ("caption", pa.string()),
        ("meta", pa.string()),  # JSON object: importer extras, generation parameters, annotator votes
    ]
)


class DatasetError(ValueError):
    """A dataset folder or an input to it is malformed; the message names the file and how to fix it."""


@dataclass
class Record:
    """One image's row.

    Attributes:
        id: unique within the folder; also the image file stem. Letters, digits, ``._-``.
        split: ``train`` / ``val`` / ``test`` (any lower-case identifier is accepted).
        source: where it came from (``"ferplus:FER2013Train/fer0000000.png"``, ``"synfer-generate"``).
        expression: label (real data) or target (synthetic), one of the header's expressions; None if unlabelled.
        label_probs: soft label over the header's expressions (sums to 1), or None.
        aus: AU intensities in the header's AU order, or None.
        caption: text description, or None.
        meta: extra fields (JSON-serialisable).
    """

    id: str
    split: str
    source: str
    expression: str | None = None
    label_probs: Sequence[float] | None = None
    aus: Sequence[float] | None = None
    caption: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def image(self) -> str:
        return f"{IMAGES_DIR}/{self.id}.png"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def check_replaceable(path: Path) -> None:
    """Refuse ``--overwrite`` on anything synfer did not make: a folder may be replaced only when it is empty or
    holds synfer's own files (:data:`_OURS`), and never through a symbolic link (the link's target would go)."""
    path = Path(path)
    if path.is_symlink():
        raise DatasetError(f"{path} is a symbolic link; synfer does not replace links. Give the real folder's path "
                           "or another output path.")
    if not path.exists():
        return
    if not path.is_dir():
        raise DatasetError(f"{path} is a file, not a folder synfer made; --overwrite only replaces synfer's own "
                           "output folders. Choose another output path.")
    if any(path.iterdir()) and not any((path / name).exists() for name in _OURS):
        raise DatasetError(f"{path} holds files synfer did not make (none of {', '.join(_OURS)}); --overwrite only "
                           "replaces synfer's own output folders. Choose another output path, or empty it yourself.")


def clear_folder(folder: Path) -> None:
    """Remove everything in ``folder`` but its writer's lock (``--overwrite`` once the lock is held)."""
    for p in Path(folder).iterdir():
        if p.name != LOCK_FILE:
            _remove(p)


def mark_as_ours(folder: Path, stage: str) -> None:
    """Write :data:`MARKER_FILE` into a new output folder, so a later ``--overwrite`` may replace it."""
    (Path(folder) / MARKER_FILE).write_text(json.dumps({"made_by": "synfer", "stage": stage}) + "\n")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class FolderLock:
    """One writer per output folder: ``LOCK_FILE`` names the writing process (host, pid, start time).

    A second writer is refused with the holder's name; a lock left by a process that no longer runs (on this host)
    is taken over, as is one held by this very process (an earlier writer it abandoned).
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None or self._stale(holder):
                    self.path.unlink(missing_ok=True)
                    continue
                raise DatasetError(
                    f"{self.path.parent} is being written by process {holder.get('pid')} on "
                    f"{holder.get('host')} (since {holder.get('since')}); two writers would corrupt it. Wait for it "
                    f"to finish or stop it; if no such process runs, delete {self.path}.") from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.me))
            return self
        raise DatasetError(f"{self.path}: could not take the writer's lock; another writer keeps taking it.")

    def _holder(self) -> dict[str, Any] | None:
        """The lock's holder, or None when the file is unreadable and old (a writer killed mid-write)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            try:
                young = time.time() - self.path.stat().st_mtime < 5
            except OSError:
                return None
            return {"pid": "?", "host": "?", "since": "just now"} if young else None

    def _stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") != self.me["host"] or not isinstance(holder.get("pid"), int):
            return False  # another machine's process cannot be checked from here
        return holder["pid"] == self.me["pid"] or not _process_alive(holder["pid"])

    def abandoned(self) -> bool:
        """Whether the folder's writer is gone (no lock, or one left by a process that no longer runs here)."""
        if not self.path.exists():
            return True
        holder = self._holder()
        return holder is None or (self._stale(holder) and holder.get("pid") != self.me["pid"])

    def release(self) -> None:
        holder = self._holder() if self.path.exists() else None
        if holder is not None and holder.get("pid") == self.me["pid"] and holder.get("host") == self.me["host"]:
            self.path.unlink(missing_ok=True)


def replace_path(tmp: Path, dest: Path) -> None:
    """Move a finished ``tmp`` (file or folder) to ``dest``.

    A folder cannot be renamed over a non-empty one, so the previous ``dest`` is first moved aside to
    ``.old-<name>`` and removed only once the new one is in place; a reader killed in between finds either the
    new ``dest`` or the complete old one under that fixed name (``train_state.load_state`` recovers it).
    """
    old = dest.with_name(f".old-{dest.name}")
    _remove(old)
    if dest.exists() or dest.is_symlink():
        os.replace(dest, old)
    os.replace(tmp, dest)
    _remove(old)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write JSON under a temporary name and rename it into place (never a half-written file)."""
    _atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of a PIL image (mode kept: L for gray, RGB for colour)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # level 1: 3-4x faster than default, files ~10% larger
    return buf.getvalue()


def read_header(path: str | Path) -> DatasetHeader:
    """Parse ``dataset.json`` of a folder, with errors that name the file."""
    hp = Path(path) / HEADER_FILE
    if not hp.is_file():
        raise DatasetError(f"{path} is not a synfer dataset folder: {HEADER_FILE} is missing.")
    try:
        d = json.loads(hp.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{hp}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}.") from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"{hp}: not UTF-8 text (byte {e.start}); a synfer header is UTF-8 JSON.") from e
    try:
        return DatasetHeader.from_dict(d, source=str(hp))
    except ValueError as e:
        raise DatasetError(str(e)) from e


def shard_files(path: str | Path) -> list[Path]:
    """The record shards of a folder, in name order."""
    p = Path(path)
    return sorted(f for f in p.iterdir() if f.is_file() and _SHARD_RE.match(f.name))


def validate_record(rec: Record, header: DatasetHeader, where: str = "") -> None:
    """Check one record against the header; raise :class:`DatasetError` naming the record and the problem."""
    at = f"{where}record {rec.id!r}: "
    if not isinstance(rec.id, str) or not _ID_RE.match(rec.id):
        raise DatasetError(f"{where}bad record id {rec.id!r}: use letters, digits, '.', '_' or '-' (max 200).")
    if not isinstance(rec.split, str) or not SPLIT_RE.match(rec.split):
        raise DatasetError(f"{at}bad split {rec.split!r}: use a lower-case name such as train, val or test.")
    if rec.expression is not None and rec.expression not in header.expressions:
        raise DatasetError(f"{at}expression {rec.expression!r} is not one of the header's {list(header.expressions)}.")
    if rec.label_probs is not None:
        probs = np.asarray(rec.label_probs, dtype=np.float64)
        if probs.shape != (len(header.expressions),):
            raise DatasetError(
                f"{at}label_probs has {probs.size} values; the header lists {len(header.expressions)} expressions."
            )
        if not np.all(np.isfinite(probs)) or probs.min() < 0 or abs(probs.sum() - 1.0) > 1e-3:
            raise DatasetError(f"{at}label_probs must be non-negative and sum to 1; got {probs.round(4).tolist()}.")
    if rec.aus is not None:
        if header.aus is None:
            raise DatasetError(f"{at}has AU values but the header declares no AU set; create the writer with aus=.")
        aus = np.asarray(rec.aus, dtype=np.float64)
        if aus.shape != (len(header.aus),):
            raise DatasetError(f"{at}aus has {aus.size} values; the header lists {len(header.aus)} AUs.")
        if not np.all(np.isfinite(aus)):
            raise DatasetError(f"{at}aus contains NaN or inf.")


class DatasetWriter:
    """Create, append to, or resume a dataset folder.

    Use as a context manager: a clean exit marks the folder complete; an exception (or a kill) leaves it
    incomplete, with every flushed shard intact, ready for ``resume=True``.

    Args:
        path: the folder.
        expressions: expression names in order (required when creating).
        aus: the AU set, or None.
        mode: ``"create"`` (the folder must not exist or be empty), ``"overwrite"`` (delete it first),
            ``"resume"`` (continue a folder; ids already written are reported by :meth:`has` and refused by
            :meth:`add`), ``"append"`` (same as resume, for a complete folder).
        shard_tag: distinguishes shards of parallel writers (``records-<tag>-00000.parquet``).
        write_header: False for the helper writers of a parallel job: they write only their shards and images and
            never touch ``dataset.json`` (nor clean temporary files), which belongs to the one main writer
            (see :meth:`adopt_records`).
        flush_every: records per shard.
        licence: licence note for the header.
    """

    def __init__(
        self,
        path: str | Path,
        expressions: Sequence[str] | None = None,
        aus: AUSet | None = None,
        mode: str = "create",
        shard_tag: str | None = None,
        flush_every: int = 5000,
        licence: str = "",
        write_header: bool = True,
    ) -> None:
        if mode not in ("create", "overwrite", "resume", "append"):
            raise ValueError(f"mode must be create, overwrite, resume or append; got {mode!r}.")
        if shard_tag is not None and not re.match(r"^[A-Za-z0-9_]+$", shard_tag):
            raise ValueError(f"shard_tag {shard_tag!r}: use letters, digits and '_'.")
        self.path = Path(path)
        self.flush_every = flush_every
        self.shard_tag = shard_tag
        self.write_header = write_header
        self._buffer: list[dict] = []
        self._closed = False
        if mode == "overwrite":
            check_replaceable(self.path)
        elif self.path.is_symlink() or (self.path / IMAGES_DIR).is_symlink():
            raise DatasetError(f"{self.path}: the output folder (or its {IMAGES_DIR}/) is a symbolic link; synfer "
                               "writes only into real folders. Give the real path.")
        # helpers of a parallel job write beside the main writer, which holds the lock
        self._lock = FolderLock(self.path).acquire() if write_header else None
        try:
            self._open(mode, expressions, aus, licence)
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise

    def _open(self, mode: str, expressions: Sequence[str] | None, aus: AUSet | None, licence: str) -> None:
        """Create, clear (``overwrite``) or reopen (``resume``/``append``) the folder, the lock held."""
        exists = any(p.name != LOCK_FILE for p in self.path.iterdir())
        if mode == "overwrite" and exists:
            clear_folder(self.path)
            exists = False
        if mode in ("resume", "append") and exists:
            self.header = read_header(self.path)
            if expressions is not None:
                check_same_order("expression", self.header.expressions, list(expressions), str(self.path), "writer")
            if aus is not None and self.header.aus is not None:
                check_same_order("AU", self.header.aus.names, aus.names, str(self.path), "writer")
            if self.header.aus is None and aus is not None:
                raise DatasetError(f"{self.path}: cannot add an AU set to a folder that was created without one.")
            if self.write_header:  # a helper must not delete the main writer's images in flight
                self._clean_temp_files()
            self._ids = set(DatasetFolder(self.path, allow_incomplete=True).ids)
            self.header.complete = False
        else:
            if exists:
                raise DatasetError(
                    f"{self.path} already exists and is not empty. Choose another output folder, or pass "
                    "--overwrite to replace it, or --resume to continue an interrupted run."
                )
            if expressions is None:
                raise ValueError("expressions are required to create a dataset folder.")
            self.header = DatasetHeader(expressions=tuple(expressions), aus=aus, licence=licence)
            self._ids = set()
        (self.path / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        self._next_shard = self._first_free_shard()
        self._write_header()

    # -- state -----------------------------------------------------------------------------------------------
    def has(self, record_id: str) -> bool:
        """True if a record with this id is already written (or buffered)."""
        return record_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add_provenance(self, entry: dict) -> None:
        self.header.provenance.append(entry)

    def count_skipped(self, reason: str, detail: str, keep_examples: int = 20) -> None:
        """Record a bad input that was skipped (``--skip-bad``): counted per reason, first examples kept."""
        skipped = self.header.stats.setdefault("skipped", {})
        entry = skipped.setdefault(reason, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < keep_examples:
            entry["examples"].append(detail)

    # -- writing ---------------------------------------------------------------------------------------------
    def add(self, record: Record, image: Image.Image | bytes | str | Path, link: bool = False) -> None:
        """Add one record and its image.

        Args:
            record: the row (validated against the header).
            image: a PIL image, encoded PNG bytes, or a path to a PNG file to copy as is.
            link: with a path, hard-link it instead of copying when the filesystem allows (copies otherwise).
                Safe because synfer never writes an image in place, only by rename; used by the dataset
                operations, where copying 30k small PNGs costs 5-10x more than linking them.
        """
        if self._closed:
            raise RuntimeError("writer is closed")
        validate_record(record, self.header)
        if record.id in self._ids:
            raise DatasetError(f"{self.path}: duplicate record id {record.id!r}.")
        target = self.path / record.image
        if isinstance(image, Image.Image):
            _atomic_write_bytes(target, encode_png(image))
        elif isinstance(image, bytes):
            _atomic_write_bytes(target, image)
        else:
            src = Path(image)
            if src.suffix.lower() != ".png":
                raise DatasetError(f"{src}: only PNG files are copied as is; pass a PIL image to convert it.")
            tmp = target.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{target.name}")
            try:
                if not link:
                    raise OSError
                os.link(src, tmp)
            except OSError:  # not asked, or another filesystem / no link support: copy
                shutil.copyfile(src, tmp)
            os.replace(tmp, target)
        self._ids.add(record.id)
        self._buffer.append(
            {
                "id": record.id,
                "image": record.image,
                "split": record.split,
                "source": record.source,
                "expression": record.expression,
                "label_probs": None if record.label_probs is None else [float(x) for x in record.label_probs],
                "aus": None if record.aus is None else [float(x) for x in record.aus],
                "caption": record.caption,
                "meta": json.dumps(record.meta, sort_keys=True) if record.meta else None,
            }
        )
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write buffered records as a new shard (atomically) and refresh the header's counts."""
        if not self._buffer:
            return
        table = pa.Table.from_pylist(self._buffer, schema=RECORD_SCHEMA)
        name = f"records-{self.shard_tag}-{self._next_shard:05d}.parquet" if self.shard_tag else \
            f"records-{self._next_shard:05d}.parquet"
        final = self.path / name
        tmp = final.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{name}")
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        self._next_shard += 1
        self._buffer = []
        self.header.stats["records"] = len(self._ids)
        self._write_header()

    def adopt_records(self) -> None:
        """Count in the records that parallel helper writers (``write_header=False``) have flushed to this folder;
        call after they have closed, before :meth:`close`."""
        self.flush()
        self._ids = set(DatasetFolder(self.path, allow_incomplete=True).ids)

    def close(self, complete: bool = True) -> None:
        """Flush and write the header; ``complete=True`` marks the folder finished."""
        if self._closed:
            return
        self.flush()
        self.header.stats["records"] = len(self._ids)
        self.header.complete = complete
        self._write_header()
        self._closed = True
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On error keep what was flushed plus the buffer, but leave the folder marked incomplete.
        self.close(complete=exc_type is None)

    # -- helpers ---------------------------------------------------------------------------------------------
    def _write_header(self) -> None:
        if self.write_header:
            atomic_write_json(self.path / HEADER_FILE, self.header.to_dict())

    def _first_free_shard(self) -> int:
        used = [-1]
        for f in shard_files(self.path):
            m = _SHARD_RE.match(f.name)
            if m and m.group(2) is not None and m.group(1) == self.shard_tag:
                used.append(int(m.group(2)))
        return max(used) + 1

    def _clean_temp_files(self) -> None:
        for d in (self.path, self.path / IMAGES_DIR):
            if d.is_dir():
                for f in d.glob(".tmp-*"):
                    f.unlink(missing_ok=True)


class DatasetFolder:
    """Read a dataset folder.

    Args:
        path: the folder.
        expect_expressions: if given, the header's expression order must equal it (else OrderMismatchError).
        expect_aus: if given, the header's AU order must equal it.
        allow_incomplete: read a folder whose writer has not finished (by default refused, with the fix).
    """

    def __init__(
        self,
        path: str | Path,
        expect_expressions: Sequence[str] | None = None,
        expect_aus: Sequence[str] | None = None,
        allow_incomplete: bool = False,
    ) -> None:
        self.path = Path(path)
        self.header = read_header(self.path)
        if not self.header.complete and not allow_incomplete:
            raise DatasetError(
                f"{self.path} is incomplete (its writer was interrupted). Rerun the command that made it with "
                "--resume to finish it, or read it with allow_incomplete=True."
            )
        if expect_expressions is not None:
            check_same_order("expression", list(expect_expressions), self.header.expressions, "the caller",
                             str(self.path))
        if expect_aus is not None:
            if self.header.aus is None:
                raise DatasetError(f"{self.path} has no AU values; run `synfer prepare` on it first.")
            check_same_order("AU", list(expect_aus), self.header.aus.names, "the caller", str(self.path))
        shards = shard_files(self.path)
        tables = []
        for f in shards:
            try:
                t = pq.read_table(f)
            except Exception as e:  # pyarrow raises several types for a damaged file
                raise DatasetError(f"{f}: cannot read Parquet shard ({e}). Delete it and rerun with --resume.") from e
            missing = [c for c in RECORD_SCHEMA.names if c not in t.column_names]
            if missing:
                raise DatasetError(f"{f}: missing columns {missing}; this is not a synfer records shard.")
            try:
                tables.append(t.select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                wrong = {col.name: f"{col.type}, not {RECORD_SCHEMA.field(col.name).type}"
                         for col in t.select(RECORD_SCHEMA.names).schema if col.type != RECORD_SCHEMA.field(col.name).type}
                raise DatasetError(f"{f}: columns of the wrong type ({wrong}); the shard was written by something "
                                   f"other than synfer ({type(e).__name__}).") from e
        self.table: pa.Table = pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()
        self._check_containment()

    def _check_containment(self) -> None:
        """Every record's image is ``images/<id>.png`` inside the folder, reached through no symbolic link: a record
        may not point a reader at a file elsewhere (``../../etc/passwd``, an absolute path, a link)."""
        import pyarrow.compute as pc

        if (self.path / IMAGES_DIR).is_symlink():
            raise DatasetError(f"{self.path / IMAGES_DIR} is a symbolic link; a dataset folder's images must be its "
                               "own files. Copy them in (synfer validate names such problems).")
        want = pc.binary_join_element_wise(IMAGES_DIR + "/", self.table.column("id"), ".png", "")
        bad = pc.invert(pc.fill_null(pc.equal(self.table.column("image"), want), False))
        if pc.any(bad).as_py():
            row = self.table.filter(bad).slice(0, 1).to_pylist()[0]
            raise DatasetError(f"{self.path}: record {row['id']!r} points its image at {row['image']!r}; a record's "
                               f"image must be {IMAGES_DIR}/<id>.png inside the folder. The folder was edited by "
                               "hand or made by something else; rebuild it with synfer.")

    # -- basic access ----------------------------------------------------------------------------------------
    @property
    def expressions(self) -> tuple[str, ...]:
        return self.header.expressions

    @property
    def au_names(self) -> tuple[str, ...]:
        return self.header.aus.names if self.header.aus is not None else ()

    @property
    def ids(self) -> list[str]:
        return self.table.column("id").to_pylist()

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> list:
        return self.table.column(name).to_pylist()

    def image_path(self, rel: str) -> Path:
        """The path of a record's ``image`` entry, refused where it is a symbolic link (it could lead outside)."""
        p = self.path / rel
        if p.is_symlink():
            raise DatasetError(f"{p} is a symbolic link; a dataset folder's images must be its own files (it could "
                               f"point outside the folder). Replace it with the file, or run `synfer validate`.")
        return p

    def load_image(self, rel: str) -> Image.Image:
        """Open a record's image (fully decoded, file closed; never through a symbolic link)."""
        p = self.image_path(rel)
        try:
            with Image.open(p) as im:
                im.load()
                return im
        except FileNotFoundError as e:
            raise DatasetError(f"{p}: image file is missing; run `synfer validate {self.path}`.") from e
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # truncated, not an image
            raise DatasetError(f"{p}: the image does not decode ({type(e).__name__}: {e}); run `synfer validate "
                               f"{self.path}` to list every such file.") from e

    def records(self, split: str | None = None) -> Iterator[Record]:
        """Iterate records (optionally of one split) as :class:`Record` objects."""
        for row in self.table.to_pylist():
            if split is not None and row["split"] != split:
                continue
            yield Record(
                id=row["id"], split=row["split"], source=row["source"], expression=row["expression"],
                label_probs=row["label_probs"], aus=row["aus"], caption=row["caption"],
                meta=json.loads(row["meta"]) if row["meta"] else {},
            )

    def select_split(self, split: str) -> pa.Table:
        import pyarrow.compute as pc

        return self.table.filter(pc.equal(self.table.column("split"), split))

    # -- pandas view -----------------------------------------------------------------------------------------
    def to_pandas(self, expand_meta: bool = True):
        """A pandas DataFrame with people's column names.

        Columns: ``id, image, split, source, expression, caption``, then one column per AU (``AU01``, ...), one
        per expression probability (``neutral``, ``happiness``, ... as in py-feat), then the meta keys.
        """
        import pandas as pd

        t = self.table
        df = pd.DataFrame({c: t.column(c).to_pylist() for c in ("id", "image", "split", "source", "expression",
                                                                 "caption")})
        n = len(df)
        if self.header.aus is not None:
            au = _fixed_matrix(t.column("aus").to_pylist(), len(self.header.aus), n)
            for j, name in enumerate(self.header.aus.names):
                df[name] = au[:, j]
        probs = _fixed_matrix(t.column("label_probs").to_pylist(), len(self.expressions), n)
        for j, name in enumerate(self.expressions):
            df[name] = probs[:, j]
        if expand_meta:
            metas = [json.loads(m) if m else {} for m in t.column("meta").to_pylist()]
            keys = sorted({k for m in metas for k in m})
            for k in keys:
                col = k if k not in df.columns else f"meta_{k}"
                df[col] = [m.get(k) for m in metas]
        return df

    def counts(self) -> dict[str, dict[str, int]]:
        """Records per split and per expression: ``{split: {expression or "(none)": n}}``."""
        out: dict[str, dict[str, int]] = {}
        for s, e in zip(self.column("split"), self.column("expression"), strict=True):
            d = out.setdefault(s, {})
            key = e if e is not None else "(none)"
            d[key] = d.get(key, 0) + 1
        return out


def _fixed_matrix(rows: list, width: int, n: int) -> np.ndarray:
    """List-of-lists (None for missing) -> float32 (n, width) with NaN where missing."""
    out = np.full((n, width), np.nan, dtype=np.float32)
    for i, r in enumerate(rows):
        if r is not None:
            out[i] = r
    return out
