import time

import pytest

from conftest import FERPLUS_DIR, needs_ferplus, tree_state, write_ferplus_fixture
from synfer.core.dataset import DatasetError, DatasetFolder
from synfer.core.options import ImportOptions
from synfer.importers.common import BadInputError
from synfer.importers.ferplus import ferplus_target, import_ferplus
from synfer.schema import FERPLUS8

V = [0.0] * 8


def onehot(i):
    v = list(V)
    v[i] = 1.0
    return v


@pytest.mark.parametrize("votes,mode,expected", [
    # single votes are dropped first: [4,0,0,1,3,2,...] -> [4,0,0,0,3,2], 4 of 9 is no majority
    ([4, 0, 0, 1, 3, 2, 0, 0, 0, 0], "majority", None),
    ([4, 0, 0, 1, 3, 2, 0, 0, 0, 0], "probability", [4 / 7, 0, 0, 0, 3 / 7, 0, 0, 0]),
    ([4, 0, 0, 1, 3, 2, 0, 0, 0, 0], "multi_target", [4 / 7, 0, 0, 0, 3 / 7, 0, 0, 0]),
    ([6, 0, 1, 1, 0, 0, 0, 0, 2, 0], "majority", onehot(0)),
    ([6, 0, 1, 1, 0, 0, 0, 0, 2, 0], "probability", onehot(0)),  # 6 of 8 already covers 75%
    ([6, 3, 0, 0, 0, 0, 0, 0, 0, 1], "crossentropy", [6 / 9, 3 / 9, 0, 0, 0, 0, 0, 0]),
    ([0, 0, 0, 0, 0, 0, 0, 0, 8, 2], "majority", None),  # unknown wins
    ([0, 0, 0, 0, 0, 0, 0, 0, 0, 10], "probability", None),  # not a face
    ([5, 0, 0, 0, 0, 0, 0, 0, 3, 2], "probability", None),  # stops at unknown with only half the votes
    ([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], "majority", None),  # all single votes
    ([0, 4, 0, 0, 0, 0, 0, 2, 2, 2], "multi_target", None),  # only 4 of 10 reach 30%: <= half
    ([0, 6, 0, 0, 0, 0, 0, 0, 4, 0], "multi_target", onehot(1)),  # unknown mass dropped from the 8 classes
])
def test_ferplus_target_modes(votes, mode, expected):
    got = ferplus_target(votes, mode)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_bad_mode():
    with pytest.raises(ValueError, match="majority"):
        ferplus_target([1] * 10, "vote")


ROWS = {
    "FER2013Train": [[8, 0, 0, 0, 0, 0, 0, 0, 2, 0], [0, 9, 0, 0, 0, 0, 0, 0, 1, 0], [4, 0, 0, 1, 3, 2, 0, 0, 0, 0]],
    "FER2013Valid": [[0, 0, 10, 0, 0, 0, 0, 0, 0, 0]],
    "FER2013Test": [[0, 0, 0, 0, 0, 0, 0, 10, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]],
}


def test_import_fixture_majority(tmp_path):
    src = write_ferplus_fixture(tmp_path / "src", ROWS)
    before = tree_state(src)
    out = import_ferplus(src, tmp_path / "out")
    d = DatasetFolder(out, expect_expressions=FERPLUS8.names)
    assert d.counts() == {"train": {"neutral": 1, "happiness": 1}, "val": {"surprise": 1}, "test": {"contempt": 1}}
    assert d.header.stats["excluded_unknown_or_not_face"] == {"train": 1, "val": 0, "test": 1}
    r = {x.id: x for x in d.records()}["fer0000001"]
    assert r.source == "ferplus:FER2013Train/fer0000001.png" and r.meta["votes"][1] == 9
    assert list(r.label_probs) == onehot(1)
    assert (out / "images" / "fer0000001.png").read_bytes() == (src / "FER2013Train" / "fer0000001.png").read_bytes()
    assert d.header.provenance[0]["stage"] == "import-ferplus"
    assert "MIT" in d.header.licence
    assert tree_state(src) == before  # the source is never modified


def test_import_fixture_probability_mode(tmp_path):
    src = write_ferplus_fixture(tmp_path / "src", ROWS)
    d = DatasetFolder(import_ferplus(src, tmp_path / "out", label_mode="probability", splits=["train"]))
    r = {x.id: x for x in d.records()}["fer0000002"]
    assert r.expression == "neutral" and r.label_probs == pytest.approx([4 / 7, 0, 0, 0, 3 / 7, 0, 0, 0])
    assert set(d.counts()) == {"train"} and d.header.stats["label_mode"] == "probability"


def test_malformed_row_fails_before_writing(tmp_path):
    src = write_ferplus_fixture(tmp_path / "src", ROWS)
    label = src / "FER2013Valid" / "label.csv"
    label.write_text(label.read_text() + 'fer9.png,"(0, 0, 48, 48)",1,2,x,0,0,0,0,0,0,0\n')
    with pytest.raises(BadInputError, match=r"FER2013Valid/label.csv, line 2.*--skip-bad"):
        import_ferplus(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    d = DatasetFolder(import_ferplus(src, tmp_path / "out", importing=ImportOptions(skip_bad=True)))
    assert d.header.stats["skipped"]["malformed_row"]["count"] == 1
    assert "line 2" in d.header.stats["skipped"]["malformed_row"]["examples"][0]


@pytest.mark.parametrize("damage", ["corrupt", "missing", "not_png"])
def test_bad_image(tmp_path, damage):
    src = write_ferplus_fixture(tmp_path / "src", ROWS)
    img = src / "FER2013Train" / "fer0000001.png"
    if damage == "corrupt":
        img.write_bytes(img.read_bytes()[:30])
    elif damage == "missing":
        img.unlink()
    else:
        img.write_bytes(b"GIF89a....")
    with pytest.raises(BadInputError, match=r"fer0000001.png.*label.csv, line 2"):
        import_ferplus(src, tmp_path / "out")
    with pytest.raises(DatasetError, match="incomplete"):  # never reads as complete
        DatasetFolder(tmp_path / "out")
    d = DatasetFolder(import_ferplus(src, tmp_path / "out2", importing=ImportOptions(skip_bad=True)))
    assert d.header.stats["skipped"]["bad_image"]["count"] == 1
    assert "fer0000001" not in d.ids and len(d) == 3


def test_missing_layout_explained(tmp_path):
    with pytest.raises(BadInputError, match="FER2013Train"):
        import_ferplus(tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="Unknown split"):
        write_ferplus_fixture(tmp_path / "src", ROWS)
        import_ferplus(tmp_path / "src", tmp_path / "out", splits=["dev"])


def test_resume_after_failure(tmp_path):
    src = write_ferplus_fixture(tmp_path / "src", ROWS)
    img = src / "FER2013Test" / "fer0000004.png"
    good = img.read_bytes()
    img.write_bytes(b"broken")
    with pytest.raises(BadInputError):
        import_ferplus(src, tmp_path / "out")
    img.write_bytes(good)  # the user fixes the file and resumes
    d = DatasetFolder(import_ferplus(src, tmp_path / "out", importing=ImportOptions(resume=True)))
    assert len(d) == 4 and len(set(d.ids)) == 4
    d2 = DatasetFolder(import_ferplus(src, tmp_path / "out", importing=ImportOptions(resume=True)))  # resuming a finished folder: no-op
    assert sorted(d2.ids) == sorted(d.ids)


def test_resume_with_other_options_refused(tmp_path):
    src = write_ferplus_fixture(tmp_path / "src", ROWS)
    import_ferplus(src, tmp_path / "out", splits=["train"])
    with pytest.raises(DatasetError, match="label_mode='majority'"):
        import_ferplus(src, tmp_path / "out", splits=["train"], label_mode="probability", importing=ImportOptions(resume=True))
    d = DatasetFolder(import_ferplus(src, tmp_path / "out", splits=["train"], importing=ImportOptions(resume=True, skip_bad=True)))
    assert [e["resumed"] for e in d.header.provenance] == [False, True]  # the resume is on record


@needs_ferplus
def test_real_ferplus_test_counts(tmp_path):
    """The reader on the real folder's test split (the whole import is the slow test below)."""
    d = DatasetFolder(import_ferplus(FERPLUS_DIR, tmp_path / "ferplus", splits=["test"]))
    counts = d.counts()
    assert {s: sum(c.values()) for s, c in counts.items()} == {"test": 3137}
    # class counts of the official majority protocol (deterministic for this data)
    assert counts["test"] == {"neutral": 1083, "happiness": 892, "surprise": 394, "sadness": 382, "anger": 269,
                              "disgust": 16, "fear": 86, "contempt": 15}
    assert not d.header.stats.get("skipped") and d.to_pandas()["fer2013_label"].notna().all()


@pytest.mark.slow
@needs_ferplus
def test_real_ferplus_majority_counts(tmp_path):
    t0 = time.perf_counter()
    d = DatasetFolder(import_ferplus(FERPLUS_DIR, tmp_path / "ferplus"))
    elapsed = time.perf_counter() - t0
    counts = d.counts()
    assert {s: sum(c.values()) for s, c in counts.items()} == {"train": 25045, "val": 3191, "test": 3137}
    assert counts["train"]["happiness"] == 7284 and counts["train"]["disgust"] == 116
    assert counts["val"]["neutral"] == 1180 and counts["val"]["contempt"] == 16
    assert counts["test"]["happiness"] == 892 and not d.header.stats.get("skipped")
    assert d.to_pandas()["fer2013_label"].notna().all()
    assert elapsed < 120  # the benchmark (benchmarks/import_ferplus.py) holds the < 60 s figure
