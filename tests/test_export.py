"""Exports round-trip: ImageFolder, Parquet and WebDataset tars hold the source records and image bytes.

(The standard readers on these exports: tests/test_clients.py.)
"""

from __future__ import annotations

import json
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import synfer.core.export as export
from conftest import EXPORT_EXPR as EXPR
from conftest import EXPORT_PLAN as PLAN
from conftest import write_export_dataset as make_dataset
from synfer.core.dataset import DatasetError, DatasetFolder, DatasetWriter, Record
from synfer.core.export import (
    export_imagefolder,
    export_parquet,
    export_webdataset,
    flat_record,
    hf_split,
    json_row,
)
from synfer.schema import AUSet


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.fixture(params=[None, AUSet.from_names(["AU01", "AU12"])], ids=["no_aus", "aus"])
def ds(request, tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "src", aus=request.param)


def expected_rows(ds: Path, split: str | None = None) -> dict[str, tuple[dict, bytes]]:
    """id -> (flat row, image bytes), from the source folder."""
    f = DatasetFolder(ds)
    return {r.id: (flat_record(r, f.header), (ds / r.image).read_bytes()) for r in f.records(split)}


def assert_same_row(got: dict, want: dict) -> None:
    assert got.keys() >= want.keys()
    for key, value in want.items():
        if key == "label_probs" and value is not None:
            np.testing.assert_allclose(got[key], value, rtol=1e-6)
        elif isinstance(value, float):
            assert got[key] == pytest.approx(value)
        else:
            assert got[key] == value, key


def test_flat_record_names_columns_for_people(ds: Path) -> None:
    f = DatasetFolder(ds)
    row = flat_record(next(f.records("val")), f.header)
    assert row["label_name"] == "neutral" and row["label"] == 0 and row["split"] == "val"
    assert ("AU01" in row) == ("aus_kind" in row) == ("has_aus" in row) == (f.header.aus is not None)
    if f.header.aus is not None:
        assert row["aus_kind"] == "measured" and row["has_aus"] is True
    unl = flat_record(next(r for r in f.records() if r.expression is None), f.header)
    assert unl["label_name"] is None and unl["label"] == -1 and unl["label_probs"] is None
    assert unl.get("has_aus", False) is False and unl.get("aus_kind") is None
    assert json.loads(flat_record(next(r for r in f.records() if r.meta), f.header)["meta"])["k"] >= 0
    assert unl["meta"] == "{}" and json_row(unl) == dict(unl, label_name="", caption="", **(
        {"aus_kind": ""} if "aus_kind" in unl else {}))
    generated = Record("g", "train", "synfer-generate", "happiness", aus=[0.5, 0.5])
    if f.header.aus is not None:
        assert flat_record(generated, f.header)["aus_kind"] == "target"


def test_imagefolder_round_trip(ds: Path, tmp_path: Path) -> None:
    out = export_imagefolder(ds, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == [".synfer", "README.md", "test", "train", "validation"]
    for split in PLAN:
        want = expected_rows(ds, split)
        base = out / hf_split(split)
        assert sorted(p.name for p in base.iterdir() if p.is_dir()) == (
            ["00_neutral", "01_happiness", "02_surprise"] + (["unlabelled"] if split == "train" else []))
        lines = pq.read_table(base / "metadata.parquet").to_pylist()
        assert [x["id"] for x in lines] == list(want)
        for line in lines:
            row, data = want[line["id"]]
            folder = row["label_name"] and f"{row['label']:02d}_{row['label_name']}" or "unlabelled"
            assert line["file_name"] == f"{folder}/{line['id']}.png"
            assert (base / line["file_name"]).read_bytes() == data
            assert_same_row({k: v for k, v in line.items() if k != "file_name"}, row)
    card = (out / "README.md").read_text()
    assert "FER test licence" in card and "| 1 | happiness |" in card and "- split: validation" in card
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(DatasetError, match="already exists"):
        export_imagefolder(ds, out)
    only = export_imagefolder(ds, out, splits=["test"], overwrite=True)
    assert sorted(p.name for p in only.iterdir()) == [".synfer", "README.md", "test"]
    with pytest.raises(DatasetError, match="no split"):
        export_imagefolder(ds, tmp_path / "x", splits=["dev"])


def test_killed_export_leaves_nothing(ds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = export.flat_record

    def dies_late(rec, header):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return real(rec, header)

    monkeypatch.setattr(export, "flat_record", dies_late)
    for fn, target in ((export_imagefolder, "hf"), (export_parquet, "pq"), (export_webdataset, "wds")):
        calls["n"] = 0
        with pytest.raises(KeyboardInterrupt):
            fn(ds, tmp_path / target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_parquet_round_trip(ds: Path, tmp_path: Path) -> None:
    files = export_parquet(ds, tmp_path / "out", rows_per_file=5)
    assert [p.relative_to(tmp_path / "out").as_posix() for p in files] == [
        "data/train-00000-of-00003.parquet", "data/train-00001-of-00003.parquet", "data/train-00002-of-00003.parquet",
        "data/validation-00000-of-00002.parquet", "data/validation-00001-of-00002.parquet",
        "data/test-00000-of-00001.parquet"]
    table = pq.read_table(files[0])
    assert table.column_names[:5] == ["image", "id", "split", "label", "label_name"]
    hf = json.loads(table.schema.metadata[b"huggingface"])
    assert hf["info"]["features"]["label"]["names"] == list(EXPR)
    want = expected_rows(ds)
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    assert [r["id"] for r in rows] == [i for s in PLAN for i in expected_rows(ds, s)]
    for r in rows:
        row, data = want[r["id"]]
        assert r["image"] == {"bytes": data, "path": f"{r['id']}.png"}
        assert_same_row(r, row)
    assert "path: data/validation-*" in (tmp_path / "out" / "README.md").read_text()
    (val,) = export_parquet(ds, tmp_path / "val", splits=["val"])
    assert set(pq.read_table(val).column("split").to_pylist()) == {"val"} and pq.read_table(val).num_rows == 6
    with pytest.raises(DatasetError, match="already exists"):
        export_parquet(ds, tmp_path / "out")
    (test,) = export_parquet(ds, tmp_path / "out", splits=["test"], overwrite=True)
    assert pq.read_table(test).num_rows == 3
    with pytest.raises(DatasetError, match="writes a folder"):
        export_parquet(ds, tmp_path / "one.parquet")


def test_webdataset_round_trip(ds: Path, tmp_path: Path) -> None:
    shards = export_webdataset(ds, tmp_path / "wds", shard_size=5)
    assert [p.name for p in shards] == ["train-000000.tar", "train-000001.tar", "train-000002.tar",
                                        "validation-000000.tar", "validation-000001.tar", "test-000000.tar"]
    info = json.loads((tmp_path / "wds" / "info.json").read_text())
    assert info["expressions"] == list(EXPR) and sum(info["shards"].values()) == len(DatasetFolder(ds))
    want = expected_rows(ds)
    seen = []
    for shard in shards:
        samples: dict[str, dict[str, bytes]] = defaultdict(dict)
        with tarfile.open(shard) as tar:
            names = tar.getnames()
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)  # how webdataset splits a member name
                samples[key][ext] = tar.extractfile(m).read()
        assert len(samples) == info["shards"][shard.name] <= 5
        keys_in_order = list(dict.fromkeys(n.split(".", 1)[0] for n in names))
        # a sample's members are adjacent in the tar
        assert [n.split(".", 1)[0] for n in names] == [k for k in keys_in_order for _ in samples[k]]
        for key, sample in samples.items():
            meta = json.loads(sample["json"])
            row, data = want[meta["id"]]
            assert key == meta["id"].replace(".", "_") and sample["png"] == data
            assert_same_row(meta, json_row(row))
            assert sorted(sample) == ["cls", "json", "png", "txt"]
            assert int(sample["cls"]) == row["label"] and sample["txt"].decode() == (row["caption"] or "")
            seen.append(meta["id"])
    assert sorted(seen) == sorted(want)


def test_webdataset_refuses_key_collisions(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path / "c", EXPR) as w:
        w.add(Record("a.b", "train", "x"), Image.new("L", (2, 2)))
        w.add(Record("a_b", "train", "x"), Image.new("L", (2, 2)))
    with pytest.raises(DatasetError, match="same WebDataset key 'a_b'"):
        export_webdataset(tmp_path / "c", tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_exports_never_modify_input(ds: Path, tmp_path: Path) -> None:
    before = snapshot(ds)
    export_imagefolder(ds, tmp_path / "a")
    export_parquet(ds, tmp_path / "b")
    export_webdataset(ds, tmp_path / "c")
    assert snapshot(ds) == before
    with pytest.raises(DatasetError, match="overlaps"):
        export_imagefolder(ds, ds, overwrite=True)
    assert snapshot(ds) == before
