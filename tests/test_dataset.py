import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import gray_face
from synfer.core.dataset import RECORD_SCHEMA, DatasetError, DatasetFolder, DatasetWriter, Record, shard_files
from synfer.schema import AUSet, OrderMismatchError

EXPR = ("neutral", "happiness", "sadness")
AUS = AUSet.from_names(["AU01", "AU12"])


def rec(i: int, split: str = "train", expression: str = "happiness") -> Record:
    probs = [0.0, 0.0, 0.0]
    probs[EXPR.index(expression)] = 1.0
    return Record(id=f"img{i:04d}", split=split, source="test", expression=expression, label_probs=probs,
                  aus=[0.1 * (i % 10), 0.5], caption=f"face {i}", meta={"seed": i})


def write(path: Path, n: int, flush_every: int = 4) -> None:
    with DatasetWriter(path, EXPR, aus=AUS, flush_every=flush_every) as w:
        for i in range(n):
            w.add(rec(i, split="train" if i % 3 else "test", expression=EXPR[i % 3]), gray_face(i))


def test_write_read_round_trip(tmp_path):
    write(tmp_path / "d", 10)
    d = DatasetFolder(tmp_path / "d", expect_expressions=EXPR, expect_aus=AUS.names)
    assert len(d) == 10 and d.header.complete and d.header.stats["records"] == 10
    assert len(shard_files(tmp_path / "d")) == 3  # 4 + 4 + 2
    r = next(d.records())
    assert r.id == "img0000" and r.meta == {"seed": 0} and r.caption == "face 0"
    img = d.load_image(r.image)
    assert np.array_equal(np.asarray(img), np.asarray(gray_face(0)))
    assert d.counts() == {"test": {"neutral": 4}, "train": {"happiness": 3, "sadness": 3}}


def test_pandas_view_has_people_columns(tmp_path):
    write(tmp_path / "d", 6)
    df = DatasetFolder(tmp_path / "d").to_pandas()
    for col in ("id", "split", "expression", "caption", "AU01", "AU12", "neutral", "happiness", "sadness", "seed"):
        assert col in df.columns
    assert df.loc[df.id == "img0001", "happiness"].item() == 1.0
    assert df.loc[df.id == "img0003", "AU01"].item() == pytest.approx(0.3)


def test_order_mismatch_refused(tmp_path):
    write(tmp_path / "d", 3)
    with pytest.raises(OrderMismatchError, match="different order"):
        DatasetFolder(tmp_path / "d", expect_expressions=("happiness", "neutral", "sadness"))
    with pytest.raises(OrderMismatchError):
        DatasetFolder(tmp_path / "d", expect_aus=("AU12", "AU01"))
    with pytest.raises(OrderMismatchError):  # appending with another order is refused too
        DatasetWriter(tmp_path / "d", ("sadness", "neutral", "happiness"), mode="append")


@pytest.mark.parametrize("bad,match", [
    (dict(id="a/b"), "bad record id"),
    (dict(split="Train"), "bad split"),
    (dict(expression="anger"), "not one of the header"),
    (dict(label_probs=[0.5, 0.2, 0.2]), "sum to 1"),
    (dict(label_probs=[1.0, 0.0]), "2 values"),
    (dict(aus=[0.1]), "1 values"),
    (dict(aus=[float("nan"), 0.0]), "NaN"),
])
def test_bad_records_rejected(tmp_path, bad, match):
    r = rec(0)
    for k, v in bad.items():
        setattr(r, k, v)
    with DatasetWriter(tmp_path / "d", EXPR, aus=AUS) as w, pytest.raises(DatasetError, match=match):
        w.add(r, gray_face(0))


def test_duplicate_id_and_existing_folder(tmp_path):
    with DatasetWriter(tmp_path / "d", EXPR, aus=AUS) as w:
        w.add(rec(0), gray_face(0))
        with pytest.raises(DatasetError, match="duplicate record id"):
            w.add(rec(0), gray_face(0))
    with pytest.raises(DatasetError, match="--overwrite"):
        DatasetWriter(tmp_path / "d", EXPR)
    with DatasetWriter(tmp_path / "d", EXPR, mode="overwrite"):
        pass
    assert len(DatasetFolder(tmp_path / "d")) == 0


def test_exception_leaves_incomplete_then_resume(tmp_path):
    path = tmp_path / "d"
    with pytest.raises(RuntimeError), DatasetWriter(path, EXPR, aus=AUS, flush_every=3) as w:
        for i in range(5):
            w.add(rec(i), gray_face(i))
        raise RuntimeError("boom")
    with pytest.raises(DatasetError, match="incomplete"):
        DatasetFolder(path)
    assert len(DatasetFolder(path, allow_incomplete=True)) == 5  # the buffer was flushed on the way out
    with DatasetWriter(path, EXPR, aus=AUS, mode="resume") as w:
        for i in range(8):
            if not w.has(f"img{i:04d}"):
                w.add(rec(i), gray_face(i))
    d = DatasetFolder(path)
    assert sorted(d.ids) == [f"img{i:04d}" for i in range(8)]


def test_append_to_complete_folder(tmp_path):
    write(tmp_path / "d", 4)
    with DatasetWriter(tmp_path / "d", mode="append") as w:
        w.add(rec(100), gray_face(100))
    assert len(DatasetFolder(tmp_path / "d")) == 5


def test_damaged_shard_named(tmp_path):
    write(tmp_path / "d", 4)
    shard = shard_files(tmp_path / "d")[0]
    shard.write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match=shard.name):
        DatasetFolder(tmp_path / "d")


def test_shard_missing_columns_named(tmp_path):
    write(tmp_path / "d", 2)
    pq.write_table(pa.table({"id": ["x"]}), tmp_path / "d" / "records-00009.parquet")
    with pytest.raises(DatasetError, match="missing columns"):
        DatasetFolder(tmp_path / "d")


def test_header_errors_named(tmp_path):
    with pytest.raises(DatasetError, match="dataset.json is missing"):
        DatasetFolder(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="line 1"):
        DatasetFolder(tmp_path)


KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from conftest import gray_face
from synfer.core.dataset import DatasetWriter, Record
with DatasetWriter({path!r}, ("neutral", "happiness"), mode="resume", flush_every=7) as w:
    for i in range({n}):
        rid = f"r{{i:05d}}"
        if w.has(rid):
            continue
        w.add(Record(id=rid, split="train", source="t", expression="neutral", label_probs=[1.0, 0.0]),
              gray_face(i))
        print(i, flush=True)
        time.sleep({delay})
"""


def test_sigkill_mid_write_then_resume(tmp_path):
    """A killed writer leaves a folder that reads as incomplete and whose every record has its image;
    resuming gives exactly the requested records, no duplicates."""
    path, n = tmp_path / "d", 60
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), path=str(path), n=n, delay=0.01)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if int(line) >= 25:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises(DatasetError, match="incomplete"):
        DatasetFolder(path)
    partial = DatasetFolder(path, allow_incomplete=True)
    assert 0 < len(partial) < n
    for r in partial.records():
        assert partial.image_path(r.image).is_file()
    done = subprocess.run([sys.executable, "-c", script.replace("time.sleep(0.01)", "pass")], capture_output=True)
    assert done.returncode == 0, done.stderr
    d = DatasetFolder(path)
    assert sorted(d.ids) == [f"r{i:05d}" for i in range(n)]
    assert not list(path.glob(".tmp-*")) and not list((path / "images").glob(".tmp-*"))
    for r in d.records():
        with Image.open(d.image_path(r.image)) as im:
            im.load()


def test_records_schema_stable():
    assert RECORD_SCHEMA.names == ["id", "image", "split", "source", "expression", "label_probs", "aus", "caption",
                                   "meta"]
