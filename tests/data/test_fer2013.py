"""fer2013.csv importer: splits, FER2013 and FER+ labels, ids, resume, and every kind of bad row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import gray_face, tree_state
from synfer.core.dataset import DatasetError, DatasetFolder
from synfer.core.options import ImportOptions
from synfer.importers import fer2013
from synfer.importers.common import FER2013_LICENCE, BadInputError
from synfer.importers.fer2013 import import_fer2013_csv
from synfer.importers.ferplus import ferplus_target
from synfer.schema import BASIC7, FERPLUS8

# (emotion, Usage) per row; pixels come from gray_face(row)
ROWS = [(3, "Training"), (0, "Training"), (6, "Training"), (3, "PublicTest"), (5, "PublicTest"),
        (4, "PrivateTest")]
# FER+ votes per row (8 emotions, unknown, NF) and image name ("" = removed by FER+). As in the real
# fer2013new.csv, FER+ numbers only the rows it keeps, so names drift from row numbers after a removed row.
VOTES = [
    ([0, 9, 1, 0, 0, 0, 0, 0, 0, 0], "fer0000000.png"),  # happiness
    ([0, 0, 0, 0, 8, 1, 1, 0, 0, 0], "fer0000001.png"),  # anger
    ([0, 0, 0, 0, 0, 0, 0, 0, 0, 0], ""),  # removed by FER+
    ([0, 0, 0, 0, 0, 0, 0, 0, 7, 3], "fer0000002.png"),  # unknown: left out
    ([2, 0, 8, 0, 0, 0, 0, 0, 0, 0], "fer0000003.png"),  # surprise
    ([6, 0, 0, 4, 0, 0, 0, 0, 0, 0], "fer0000004.png"),  # neutral
]


def pixels(i: int) -> str:
    return " ".join(map(str, np.asarray(gray_face(i)).ravel()))


def write_csv(path: Path, rows=ROWS, replace: dict[int, str] | None = None) -> Path:
    """fer2013.csv with ``rows``; ``replace`` swaps in a raw line for a data row (to make it bad)."""
    lines = ["emotion,pixels,Usage"] + [f"{e},{pixels(i)},{u}" for i, (e, u) in enumerate(rows)]
    for i, text in (replace or {}).items():
        lines[i + 1] = text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_ferplus(path: Path, votes=VOTES, usages=None) -> Path:
    usages = usages or [u for _, u in ROWS]
    lines = ["Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"]
    lines += [f"{u},{name}," + ",".join(map(str, v)) for u, (v, name) in zip(usages, votes, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def src(tmp_path: Path) -> Path:
    write_csv(tmp_path / "src" / "fer2013.csv")
    write_ferplus(tmp_path / "src" / "fer2013new.csv")
    return tmp_path / "src"


def test_fer2013_labels(src, tmp_path):
    before = tree_state(src)
    out = import_fer2013_csv(src / "fer2013.csv", tmp_path / "out")
    d = DatasetFolder(out, expect_expressions=BASIC7.names)
    assert tree_state(src) == before  # the source is never touched
    assert d.counts() == {"train": {"happiness": 1, "anger": 1, "neutral": 1},
                          "val": {"happiness": 1, "surprise": 1}, "test": {"sadness": 1}}
    assert d.ids == [f"fer2013-{i:05d}" for i in range(6)]
    assert d.header.licence == FER2013_LICENCE
    cfg = d.header.provenance[-1]["config"]
    assert cfg["source"] == str((src / "fer2013.csv").resolve()) and cfg["ferplus_csv"] is None
    recs = {r.id: r for r in d.records()}
    r = recs["fer2013-00001"]
    assert r.expression == "anger" and r.label_probs == [1.0, 0, 0, 0, 0, 0, 0]
    assert r.meta == {"fer2013_label": 0, "fer2013_row": 1}
    img = d.load_image(r.image)
    assert img.mode == "L" and np.array_equal(np.asarray(img), np.asarray(gray_face(1)))


def test_splits_and_image_options(src, tmp_path):
    out = import_fer2013_csv(src / "fer2013.csv", tmp_path / "out", splits=["val"], importing=ImportOptions(image_mode="RGB", image_size=64))
    d = DatasetFolder(out)
    assert d.ids == ["fer2013-00003", "fer2013-00004"] and set(d.column("split")) == {"val"}
    img = d.load_image(d.column("image")[0])
    assert img.mode == "RGB" and img.size == (64, 64)
    with pytest.raises(ValueError, match="Unknown split"):
        import_fer2013_csv(src / "fer2013.csv", tmp_path / "o2", splits=["valid"])


def test_ferplus_labels(src, tmp_path):
    out = import_fer2013_csv(src / "fer2013.csv", tmp_path / "out", ferplus_csv=src / "fer2013new.csv",
                             label_mode="probability")
    d = DatasetFolder(out, expect_expressions=FERPLUS8.names)
    assert d.ids == ["fer0000000", "fer0000001", "fer0000003", "fer0000004"]  # FER+'s names, not row numbers
    assert d.counts() == {"train": {"happiness": 1, "anger": 1}, "val": {"surprise": 1},
                          "test": {"neutral": 1}}
    stats = d.header.stats
    assert stats["excluded_removed_by_ferplus"] == {"train": 1, "val": 0, "test": 0}
    assert stats["excluded_unknown_or_not_face"] == {"train": 0, "val": 1, "test": 0}
    assert stats["label_mode"] == "probability" and "skipped" not in stats
    r = {r.id: r for r in d.records()}["fer0000004"]
    assert r.meta == {"fer2013_label": 4, "fer2013_row": 5, "votes": VOTES[5][0]}
    assert np.array_equal(np.asarray(d.load_image(r.image)), np.asarray(gray_face(5)))
    assert r.label_probs == pytest.approx(ferplus_target(VOTES[5][0], "probability"))
    assert d.header.provenance[-1]["config"]["ferplus_csv"] == str((src / "fer2013new.csv").resolve())


def test_ferplus_row_count_mismatch_is_an_error(src, tmp_path):
    write_ferplus(src / "short.csv", VOTES[:5], [u for _, u in ROWS[:5]])
    for skip_bad in (False, True):
        with pytest.raises(BadInputError, match=r"short\.csv has 5 data rows but .*fer2013\.csv has 6"):
            import_fer2013_csv(src / "fer2013.csv", tmp_path / "out", ferplus_csv=src / "short.csv", importing=ImportOptions(skip_bad=skip_bad))
    assert not (tmp_path / "out").exists()


def test_ferplus_misaligned_and_malformed_rows(src, tmp_path):
    usages = [u for _, u in ROWS]
    usages[1] = "PublicTest"
    write_ferplus(src / "shifted.csv", usages=usages)
    with pytest.raises(BadInputError, match=r"shifted\.csv, line 3: Usage 'PublicTest'"):
        import_fer2013_csv(src / "fer2013.csv", tmp_path / "out", ferplus_csv=src / "shifted.csv")
    bad_votes = [list(v) for v in VOTES]
    bad_votes[0] = ([0, "x", 1, 0, 0, 0, 0, 0, 0, 0], "fer0000000.png")
    write_ferplus(src / "bad.csv", bad_votes)
    with pytest.raises(BadInputError, match=r"bad\.csv, line 2: vote count happiness is 'x'"):
        import_fer2013_csv(src / "fer2013.csv", tmp_path / "out", ferplus_csv=src / "bad.csv")
    bad_votes[4] = (VOTES[4][0], "../fer0000003.png")
    bad_votes[5] = (VOTES[5][0], "fer0000001.png")
    write_ferplus(src / "bad.csv", bad_votes)
    with pytest.raises(BadInputError, match=r"bad\.csv, line 6: Image name '\.\./fer0000003\.png' should be"):
        import_fer2013_csv(src / "fer2013.csv", tmp_path / "out", ferplus_csv=src / "bad.csv", splits=["val", "test"], importing=ImportOptions(skip_bad=False))
    out = import_fer2013_csv(src / "fer2013.csv", tmp_path / "out", ferplus_csv=src / "bad.csv", importing=ImportOptions(skip_bad=True))
    d = DatasetFolder(out)
    skipped = d.header.stats["skipped"]
    assert skipped["malformed_row"]["count"] == 2 and skipped["duplicate_row"]["count"] == 1
    example = skipped["duplicate_row"]["examples"][0]
    assert "bad.csv, line 7: Image name 'fer0000001.png' is already on line 3" in example
    assert d.ids == ["fer0000001"]


BAD_ROWS = {
    "wrong pixel count": ("3,1 2 3,Training", "bad_pixels", r"3 pixel values, expected 2304"),
    "non-integer pixel": ("3,{px} 1.5,Training", "bad_pixels", r"pixel 2305 is '1.5', not an integer"),
    "out of range": ("3,256 {rest},Training", "bad_pixels", r"pixel 1 is '256', outside 0-255"),
    "negative": ("3,-1 {rest},Training", "bad_pixels", r"pixel 1 is '-1', outside 0-255"),
    "unknown emotion": ("7,{px},Training", "unknown_label", r"emotion '7' is not a code 0-6"),
    "unknown usage": ("3,{px},Validation", "unknown_usage", r"Usage 'Validation' is not one of"),
    "malformed row": ("3,{px}", "malformed_row", r"expected 3 fields, found 2"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_rows(src, tmp_path, case):
    text, reason, message = BAD_ROWS[case]
    px = pixels(2)
    line = text.format(px=px, rest=px.split(" ", 1)[1])
    write_csv(src / "fer2013.csv", replace={2: line})  # data row 2 is line 4 of the file
    with pytest.raises(BadInputError, match=rf"fer2013\.csv, line 4: .*{message}"):
        import_fer2013_csv(src / "fer2013.csv", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # labels are checked before anything is written
    out = import_fer2013_csv(src / "fer2013.csv", tmp_path / "out", importing=ImportOptions(skip_bad=True))
    d = DatasetFolder(out)
    skipped = d.header.stats["skipped"]
    assert list(skipped) == [reason] and skipped[reason]["count"] == 1
    assert "fer2013.csv, line 4" in skipped[reason]["examples"][0]
    assert len(d) == 5 and "fer2013-00002" not in d.ids and "fer2013-00003" in d.ids  # later ids keep their row


def test_bad_header_and_missing_file(tmp_path):
    (tmp_path / "x.csv").write_text("label,pixels\n3,1 2\n")
    with pytest.raises(BadInputError, match=r"x\.csv, line 1: header .* lacks column"):
        import_fer2013_csv(tmp_path / "x.csv", tmp_path / "out")
    with pytest.raises(BadInputError, match="nope.csv: fer2013.csv not found"):
        import_fer2013_csv(tmp_path / "nope.csv", tmp_path / "out")
    with pytest.raises(ValueError, match="applies to FER\\+ votes"):
        import_fer2013_csv(tmp_path / "x.csv", tmp_path / "out", label_mode="probability")


def test_resume_twice_writes_no_duplicates(src, tmp_path):
    write_csv(src / "fer2013.csv", replace={2: "3,1 2,Training"})
    out = import_fer2013_csv(src / "fer2013.csv", tmp_path / "out", importing=ImportOptions(skip_bad=True))
    for _ in range(2):
        import_fer2013_csv(src / "fer2013.csv", out, importing=ImportOptions(skip_bad=True, resume=True))
    d = DatasetFolder(out)
    assert len(d) == 5 and len(set(d.ids)) == 5
    assert d.header.stats["skipped"]["bad_pixels"]["count"] == 1  # counted once, not once per run
    with pytest.raises(DatasetError, match="already exists"):
        import_fer2013_csv(src / "fer2013.csv", out, importing=ImportOptions(skip_bad=True))


def test_interrupted_import_resumes(src, tmp_path, monkeypatch):
    real, calls = fer2013._to_image, []

    def dies_on_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-import
        return real(*args, **kwargs)

    monkeypatch.setattr(fer2013, "_to_image", dies_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        import_fer2013_csv(src / "fer2013.csv", tmp_path / "out")
    with pytest.raises(DatasetError, match="incomplete"):
        DatasetFolder(tmp_path / "out")
    assert len(DatasetFolder(tmp_path / "out", allow_incomplete=True)) == 3
    monkeypatch.setattr(fer2013, "_to_image", real)
    import_fer2013_csv(src / "fer2013.csv", tmp_path / "out", importing=ImportOptions(resume=True))
    d = DatasetFolder(tmp_path / "out")
    assert d.header.complete and d.ids == [f"fer2013-{i:05d}" for i in range(6)]
    assert len(d.header.provenance) == 2  # both runs are on record
