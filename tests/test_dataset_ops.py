"""dataset_ops: filter / split / merge write correct new folders, validate finds damage, summary counts."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synfer.core.dataset import RECORD_SCHEMA, DatasetError, DatasetFolder, DatasetWriter, Record
from synfer.core.ops import filter_dataset, merge_datasets, split_dataset
from synfer.core.provenance import provenance_entry
from synfer.core.report import (
    check_dataset,
    dataset_summary,
    dataset_summary_dict,
    info,
    validate,
    validate_dataset,
)
from synfer.schema import AUSet, OrderMismatchError

EXPR = ("neutral", "happiness", "surprise")
AUS = AUSet.from_names(["AU01", "AU12"])
PLAN = {"train": 4, "val": 2, "test": 1}  # records per class


def make_dataset(path: Path, aus: AUSet | None = None, expressions=EXPR, id_prefix: str = "",
                 plan=PLAN) -> Path:
    """3 splits x 3 classes; even i from "ferplus:", odd i from "synfer-generate:"; 5 records per shard."""
    with DatasetWriter(path, expressions, aus=aus, flush_every=5, licence="test licence") as w:
        w.add_provenance(provenance_entry("import-test", {"n": 1}))
        w.header.stats["label_mode"] = "majority"
        k = 0
        for split, n in plan.items():
            for c, expr in enumerate(expressions):
                for i in range(n):
                    probs = [0.1] * len(expressions)
                    probs[c] = 1 - 0.1 * (len(expressions) - 1)
                    origin = "ferplus" if i % 2 == 0 else "synfer-generate"
                    rec = Record(id=f"{id_prefix}{split}-{expr}-{i}", split=split, source=f"{origin}:{k}",
                                 expression=expr,
                                 label_probs=probs, aus=[0.1 * c, 0.2 * i] if aus else None,
                                 caption=f"a {expr} face" if i == 0 else None, meta={"k": k})
                    w.add(rec, Image.fromarray(np.full((8, 8), k * 7 % 256, np.uint8)))
                    k += 1
    return path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def ids(path: Path) -> list[str]:
    return DatasetFolder(path).ids


@pytest.fixture
def ds(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "src", aus=AUS)


def test_filter_keeps_exact_ids_and_records_provenance(ds: Path, tmp_path: Path) -> None:
    out = filter_dataset(ds, tmp_path / "f", splits=["train", "val"], expressions=["happy"],
                         sources=["ferplus:"])
    assert sorted(ids(out)) == ["train-happiness-0", "train-happiness-2", "val-happiness-0"]
    f = DatasetFolder(out)
    src = DatasetFolder(ds)
    assert [p["stage"] for p in f.header.provenance] == ["import-test", "filter"]
    assert f.header.provenance[-1]["counts"]["kept"] == 3
    assert f.header.stats["label_mode"] == "majority" and f.header.licence == "test licence"
    assert f.header.aus == src.header.aus and f.expressions == EXPR
    for rec in f.records():  # records and image bytes carried over unchanged
        orig = next(r for r in src.records() if r.id == rec.id)
        assert rec == orig
        assert (out / rec.image).read_bytes() == (ds / rec.image).read_bytes()
    with pytest.raises(DatasetError, match="no split"):
        filter_dataset(ds, tmp_path / "g", splits=["tset"])
    with pytest.raises(DatasetError, match="keeps none"):
        filter_dataset(ds, tmp_path / "g", sources=["affectnet:"])
    with pytest.raises(DatasetError, match="already exists"):
        filter_dataset(ds, out, splits=["train"])
    with pytest.raises(DatasetError, match="overlaps"):
        filter_dataset(ds, ds / "sub", splits=["train"])


def test_max_per_class_is_seeded_and_reproducible(ds: Path, tmp_path: Path) -> None:
    a = ids(filter_dataset(ds, tmp_path / "a", max_per_class=2, seed=3))
    b = ids(filter_dataset(ds, tmp_path / "b", max_per_class=2, seed=3))
    assert a == b
    per_group = Counter(tuple(i.split("-")[:2]) for i in a)
    assert per_group == {(s, e): min(2, n) for s, n in PLAN.items() for e in EXPR}
    others = [ids(filter_dataset(ds, tmp_path / f"s{s}", max_per_class=2, seed=s)) for s in range(4, 8)]
    assert any(o != a for o in others)


def test_remap_reindexes_renormalises_and_drops(ds: Path, tmp_path: Path) -> None:
    out = filter_dataset(ds, tmp_path / "r", remap_expressions=["surprise", "neutral"])
    f = DatasetFolder(out, expect_expressions=["surprise", "neutral"])
    assert not any("happiness" in i for i in f.ids) and len(f) == 2 * sum(PLAN.values())
    for rec in f.records():
        # source probs: 0.8 on the own class, 0.1 elsewhere -> (surprise, neutral) renormalised over 0.9
        want = [0.8 / 0.9, 0.1 / 0.9] if rec.expression == "surprise" else [0.1 / 0.9, 0.8 / 0.9]
        np.testing.assert_allclose(rec.label_probs, want, rtol=1e-6)
    with pytest.raises(OrderMismatchError):
        DatasetFolder(out, expect_expressions=EXPR)
    # unlabelled rows survive unless their kept probability mass is 0
    with DatasetWriter(tmp_path / "u", EXPR) as w:
        img = Image.new("L", (4, 4))
        w.add(Record("keep", "train", "x", "neutral", [0.6, 0.4, 0.0]), img)
        w.add(Record("zero", "train", "x", None, [0.0, 1.0, 0.0]), img)
        w.add(Record("noprobs", "train", "x", None, None), img)
    g = DatasetFolder(filter_dataset(tmp_path / "u", tmp_path / "u2",
                                     remap_expressions=["neutral", "surprise"]))
    assert g.ids == ["keep", "noprobs"]
    assert g.column("label_probs")[0] == [1.0, 0.0]
    assert g.header.provenance[-1]["counts"]["dropped"] == {"remap_zero_probability_mass": 1}


def test_split_is_stratified_reproducible_and_refuses_existing(ds: Path, tmp_path: Path) -> None:
    out = split_dataset(ds, tmp_path / "s", to_split="holdout", fraction=0.5, seed=1)
    f = DatasetFolder(out)
    counts = f.counts()
    assert counts["holdout"] == dict.fromkeys(EXPR, 2) and counts["train"] == dict.fromkeys(EXPR, 2)
    assert counts["val"] == DatasetFolder(ds).counts()["val"]
    again = DatasetFolder(split_dataset(ds, tmp_path / "s2", to_split="holdout", fraction=0.5, seed=1))
    assert again.column("split") == f.column("split") and again.ids == f.ids
    assert f.header.provenance[-1]["stage"] == "split"
    # 3 per class, fraction 0.5: each class gives 1 and the remainders add 2 more, round(0.5 * 9) = 5 in all
    odd = DatasetFolder(split_dataset(make_dataset(tmp_path / "odd", plan={"train": 3}), tmp_path / "odd2",
                                      fraction=0.5, to_split="val"))
    assert sorted(odd.counts()["val"].values()) == [1, 2, 2]
    uneven = make_dataset(tmp_path / "un", plan={"train": 1})
    flat = split_dataset(uneven, tmp_path / "un2", fraction=0.5, to_split="val", stratify=False)
    assert DatasetFolder(flat).column("split").count("val") == 2  # round(0.5 * 3)
    with pytest.raises(DatasetError, match="already has"):
        split_dataset(ds, tmp_path / "bad", to_split="val")
    with pytest.raises(DatasetError, match="rounds to 0"):
        split_dataset(uneven, tmp_path / "bad", to_split="val", fraction=0.1)


def test_merge_checks_orders_ids_and_prefixes(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a", aus=AUS, id_prefix="a")
    b = make_dataset(tmp_path / "b", aus=AUS, id_prefix="b")
    m = DatasetFolder(merge_datasets([a, b], tmp_path / "m"))
    assert len(m) == 2 * len(DatasetFolder(a)) and set(m.ids) == set(ids(a)) | set(ids(b))
    entry = m.header.provenance[-1]
    assert entry["stage"] == "merge" and len(m.header.provenance) == 1
    assert [e["provenance"][0]["stage"] for e in entry["merged_from"]] == ["import-test", "import-test"]
    assert m.header.stats["label_mode"] == "majority"

    reordered = make_dataset(tmp_path / "c", aus=AUS, expressions=("happiness", "neutral", "surprise"),
                             id_prefix="c")
    with pytest.raises(OrderMismatchError, match="expression order"):
        merge_datasets([a, reordered], tmp_path / "x")
    no_aus = make_dataset(tmp_path / "d", id_prefix="d")
    with pytest.raises(OrderMismatchError, match="AU order"):
        merge_datasets([a, no_aus], tmp_path / "x")
    other_aus = make_dataset(tmp_path / "e", aus=AUSet.from_names(["AU12", "AU01"]), id_prefix="e")
    with pytest.raises(OrderMismatchError, match="AU order"):
        merge_datasets([a, other_aus], tmp_path / "x")
    assert not (tmp_path / "x").exists()

    twin = make_dataset(tmp_path / "twin", aus=AUS, id_prefix="a")
    with pytest.raises(DatasetError, match="Duplicate record id") as err:
        merge_datasets([a, twin], tmp_path / "x")
    assert str(a) in str(err.value) and str(twin) in str(err.value)
    p = DatasetFolder(merge_datasets([a, twin], tmp_path / "p", prefix_ids=True))
    assert set(p.ids) == {f"a-{i}" for i in ids(a)} | {f"twin-{i}" for i in ids(twin)}
    assert all((p.path / r).is_file() for r in p.column("image"))
    (tmp_path / "y").mkdir()
    same_name = make_dataset(tmp_path / "y" / "a", aus=AUS, id_prefix="a")
    q = DatasetFolder(merge_datasets([a, same_name], tmp_path / "q", prefix_ids=True))
    assert len(set(q.ids)) == 2 * len(DatasetFolder(a))


def test_validate_finds_damage(ds: Path, tmp_path: Path) -> None:
    assert validate_dataset(ds) == [] and check_dataset(ds) == []
    bad = Path(shutil.copytree(ds, tmp_path / "bad"))
    (bad / "images" / "train-neutral-0.png").unlink()
    (bad / "images" / "train-neutral-1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (bad / "images" / "stray.png").write_bytes((bad / "images" / "val-neutral-0.png").read_bytes())
    row = DatasetFolder(ds).table.slice(0, 1).to_pylist()[0]
    extra = [dict(row, id="badprobs", image="images/badprobs.png", label_probs=[0.5, 0.1, 0.1]),
             dict(row)]  # second row: the id of train-neutral-0 again
    shutil.copyfile(ds / "images" / "val-neutral-0.png", bad / "images" / "badprobs.png")
    pq.write_table(pa.Table.from_pylist(extra, schema=RECORD_SCHEMA), bad / "records-00099.parquet")
    problems = validate_dataset(bad)
    text = "\n".join(problems)
    assert "train-neutral-0.png is missing" in text
    assert "train-neutral-1.png does not decode" in text
    assert "warning: images/stray.png has no record" in text
    assert "records-00099.parquet: record 'badprobs': label_probs must be non-negative and sum to 1" in text
    assert ("records-00099.parquet: duplicate record id 'train-neutral-0' (also in records-00000.parquet)"
            in text)
    assert "header counts" in text
    with pytest.raises(DatasetError, match="failed validation with 6 problem") as err:
        check_dataset(bad, max_listed=2)
    assert "and 4 more; run `synfer validate" in str(err.value)
    with pytest.raises(DatasetError) as err:  # the CLI verb lists every problem
        validate(bad)
    assert all(p in str(err.value) for p in problems if not p.startswith("warning:"))
    assert validate(ds) == f"{ds}: valid (21 records)."
    no_images = validate_dataset(bad, check_images=False)
    assert not any("missing" in q or "decode" in q for q in no_images) and "badprobs" in "".join(no_images)

    only_orphan = Path(shutil.copytree(ds, tmp_path / "orphan"))
    (only_orphan / "images" / "stray.png").write_bytes(b"x")
    assert check_dataset(only_orphan) == ["warning: images/stray.png has no record (orphan image)."]
    header = json.loads((only_orphan / "dataset.json").read_text())
    (only_orphan / "dataset.json").write_text(json.dumps(dict(header, complete=False)))
    assert any("incomplete" in p for p in validate_dataset(only_orphan))
    (only_orphan / "dataset.json").write_text("{")
    assert len(validate_dataset(only_orphan)) == 1 and "invalid JSON" in validate_dataset(only_orphan)[0]


def test_summary_reports_counts_aus_and_provenance(ds: Path, tmp_path: Path) -> None:
    d = dataset_summary_dict(ds)
    assert d["records"] == 21 and d["complete"] and list(d["counts"]) == ["train", "val", "test"]
    assert d["counts"]["train"] == dict.fromkeys(EXPR, 4)
    assert d["au_means"]["happiness"]["AU01"] == pytest.approx(0.1)
    assert d["au_means"]["neutral"]["AU12"] == pytest.approx(np.mean([0.2 * i for n in PLAN.values()
                                                                       for i in range(n)]), abs=1e-4)
    assert d["captions"] == {"with_caption": 9, "records": 21}
    json.dumps(d)  # serialisable for --json
    text = dataset_summary(ds)
    lines = text.splitlines()
    assert "records: 21" in text and "status: complete" in text
    header_line = next(line for line in lines if line.startswith("class"))
    assert header_line.split() == ["class", "train", "val", "test", "total"]
    row: dict[str, list[str]] = {}
    for line in lines[lines.index("counts (classes x splits):") + 1:]:  # first table: the counts
        row.setdefault(line.split()[0] if line.strip() else "", line.split()[1:])
    assert row["happiness"] == ["4", "2", "1", "7"] and row["total"] == ["12", "6", "3", "21"]
    assert "AU set: AU01, AU12 (scale 0-1)" in text and "AU means per expression" in text
    assert "label_mode: majority" in text and "1. import-test" in text and '"n": 1' in text
    assert info(ds) == text and json.loads(info(ds, json=True)) == json.loads(json.dumps(d))
    plain = dataset_summary(make_dataset(tmp_path / "plain"))
    assert "AU set: none yet" in plain and "AU means" not in plain


def test_operations_never_modify_inputs(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a", aus=AUS, id_prefix="a")
    b = make_dataset(tmp_path / "b", aus=AUS, id_prefix="b")
    before = (snapshot(a), snapshot(b))
    filter_dataset(a, tmp_path / "o1", max_per_class=1, remap_expressions=["neutral", "surprise"])
    split_dataset(a, tmp_path / "o2", to_split="calib", fraction=0.5)
    merge_datasets([a, b], tmp_path / "o3")
    merge_datasets([a, b], tmp_path / "o3", overwrite=True)
    validate_dataset(a)
    dataset_summary(a)
    assert (snapshot(a), snapshot(b)) == before
    assert all(check_dataset(tmp_path / o) == [] for o in ("o1", "o2", "o3"))


def test_writer_link_option_links_and_falls_back(
    ds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = DatasetFolder(ds)
    rows = [(r, ds / r.image) for r in src.records()]
    for name, link in (("linked", True), ("copied", False)):
        with DatasetWriter(tmp_path / name, EXPR, aus=AUS, flush_every=4) as w:
            for rec, image in rows:
                w.add(rec, image, link=link)
    linked, copied = DatasetFolder(tmp_path / "linked"), DatasetFolder(tmp_path / "copied")
    assert linked.table.equals(copied.table)
    for rec, image in rows:
        assert os.path.samefile(linked.path / rec.image, image)
        assert not os.path.samefile(copied.path / rec.image, image)

    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    out = filter_dataset(ds, tmp_path / "cross", splits=["val"])
    for rec in DatasetFolder(out).records():
        assert (out / rec.image).read_bytes() == (ds / rec.image).read_bytes()
        assert not os.path.samefile(out / rec.image, ds / rec.image)
