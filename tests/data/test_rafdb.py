"""RAF-DB importer: label codes and order, splits, aligned/original, root forms, resume, bad inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import gray_face, tree_state
from synfer.core.dataset import DatasetError, DatasetFolder
from synfer.core.options import ImportOptions
from synfer.importers import rafdb
from synfer.importers.common import FER2013_LICENCE, BadInputError
from synfer.importers.rafdb import RAFDB_LICENCE, import_rafdb
from synfer.schema import RAFDB7

LABELS = [("train_00001.jpg", 5), ("train_00002.jpg", 4), ("train_00003.jpg", 4), ("test_0001.jpg", 1),
          ("test_0002.jpg", 7)]


def write_rafdb(root: Path, labels=LABELS, lines: list[str] | None = None) -> Path:
    """A RAF-DB ``basic`` folder under ``root``; ``lines`` overrides the label file's text lines."""
    basic = root / "basic"
    (basic / "EmoLabel").mkdir(parents=True)
    (basic / "Image" / "aligned").mkdir(parents=True)
    (basic / "Image" / "original").mkdir(parents=True)
    for k, (name, _) in enumerate(labels):
        stem = name.rsplit(".", 1)[0]
        gray_face(k, 20).convert("RGB").save(basic / "Image" / "aligned" / f"{stem}_aligned.jpg")
        gray_face(k, 30).convert("RGB").save(basic / "Image" / "original" / name)
    text = lines if lines is not None else [f"{n} {c}" for n, c in labels]
    (basic / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(text) + "\n")
    return basic


def test_import_aligned(tmp_path):
    basic = write_rafdb(tmp_path / "src")
    before = tree_state(tmp_path / "src")
    out = import_rafdb(tmp_path / "src", tmp_path / "out")  # the folder that contains basic/
    assert tree_state(tmp_path / "src") == before
    d = DatasetFolder(out, expect_expressions=RAFDB7.names)
    assert d.counts() == {"train": {"sadness": 1, "happiness": 2}, "test": {"surprise": 1, "neutral": 1}}
    assert d.ids == ["rafdb-train_00001", "rafdb-train_00002", "rafdb-train_00003", "rafdb-test_0001",
                     "rafdb-test_0002"]
    r = next(d.records())
    assert r.label_probs == [0, 0, 0, 0, 1.0, 0, 0] and r.meta == {"rafdb_label": 5}
    assert r.source == "rafdb:Image/aligned/train_00001_aligned.jpg"
    im = d.load_image(r.image)
    assert im.format == "PNG" and im.size == (20, 20)
    assert d.header.licence == RAFDB_LICENCE and "research-only" in d.header.licence
    assert d.header.licence != FER2013_LICENCE
    cfg = d.header.provenance[-1]["config"]
    assert cfg["source"] == str(basic.resolve()) and cfg["aligned"] is True


def test_import_original_from_basic_folder(tmp_path):
    basic = write_rafdb(tmp_path / "src")
    out = import_rafdb(basic, tmp_path / "out", aligned=False, importing=ImportOptions(image_mode="L", image_size=12))
    d = DatasetFolder(out)
    assert len(d) == 5 and d.header.stats["aligned"] is False
    im = d.load_image(d.column("image")[0])
    assert im.mode == "L" and im.size == (12, 12)
    assert d.column("source")[0] == "rafdb:Image/original/train_00001.jpg"


def test_wrong_root(tmp_path):
    with pytest.raises(BadInputError, match="list_patition_label.txt"):
        import_rafdb(tmp_path, tmp_path / "out")
    basic = write_rafdb(tmp_path / "src")
    for f in (basic / "Image" / "original").iterdir():
        f.unlink()
    (basic / "Image" / "original").rmdir()
    with pytest.raises(BadInputError, match="original: folder not found"):
        import_rafdb(basic, tmp_path / "out", aligned=False)


@pytest.mark.parametrize("line, reason, message", [
    ("train_00003.jpg 8", "unknown_label", r"label '8' of train_00003\.jpg is not a code 1-7"),
    ("train_00003.jpg happy", "unknown_label", r"label 'happy'"),
    ("train_00003.jpg", "malformed_row", r"found 'train_00003\.jpg'"),
    ("val_00003.jpg 4", "malformed_row", r"found 'val_00003\.jpg 4'"),
    ("train_00001.jpg 4", "duplicate_row", r"train_00001\.jpg is already listed on line 1"),
])
def test_bad_label_lines(tmp_path, line, reason, message):
    lines = [f"{n} {c}" for n, c in LABELS]
    lines[2] = line
    write_rafdb(tmp_path / "src", lines=lines)
    with pytest.raises(BadInputError, match=rf"list_patition_label\.txt, line 3: .*{message}"):
        import_rafdb(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    d = DatasetFolder(import_rafdb(tmp_path / "src", tmp_path / "out", importing=ImportOptions(skip_bad=True)))
    assert len(d) == 4 and "rafdb-train_00003" not in d.ids
    assert d.header.stats["skipped"][reason]["count"] == 1


def test_missing_and_corrupt_images(tmp_path):
    basic = write_rafdb(tmp_path / "src")
    (basic / "Image" / "aligned" / "train_00002_aligned.jpg").unlink()
    with pytest.raises(BadInputError, match=r"train_00002_aligned\.jpg: image file not found.*line 2"):
        import_rafdb(basic, tmp_path / "out")
    (basic / "Image" / "aligned" / "test_0001_aligned.jpg").write_bytes(b"garbage")
    d = DatasetFolder(import_rafdb(basic, tmp_path / "out2", importing=ImportOptions(skip_bad=True)))
    assert len(d) == 3
    skipped = d.header.stats["skipped"]["bad_image"]
    assert skipped["count"] == 2 and "test_0001_aligned.jpg: not a readable image" in skipped["examples"][1]
    assert "list_patition_label.txt, line 4" in skipped["examples"][1]


def test_resume_twice_writes_no_duplicates(tmp_path):
    basic = write_rafdb(tmp_path / "src")
    (basic / "Image" / "aligned" / "test_0001_aligned.jpg").unlink()
    out = import_rafdb(basic, tmp_path / "out", importing=ImportOptions(skip_bad=True))
    for _ in range(2):
        import_rafdb(basic, out, importing=ImportOptions(skip_bad=True, resume=True))
    d = DatasetFolder(out)
    assert len(d) == 4 and len(set(d.ids)) == 4
    assert d.header.stats["skipped"]["bad_image"]["count"] == 1
    with pytest.raises(DatasetError, match="already exists"):
        import_rafdb(basic, out)


def test_interrupted_import_resumes(tmp_path, monkeypatch):
    basic = write_rafdb(tmp_path / "src")
    real, calls = rafdb.image_for_writer, []

    def dies_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rafdb, "image_for_writer", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        import_rafdb(basic, tmp_path / "out")
    partial = DatasetFolder(tmp_path / "out", allow_incomplete=True)
    assert partial.ids == ["rafdb-train_00001", "rafdb-train_00002"]
    monkeypatch.setattr(rafdb, "image_for_writer", real)
    import_rafdb(basic, tmp_path / "out", importing=ImportOptions(resume=True))
    d = DatasetFolder(tmp_path / "out")
    assert d.header.complete and len(d) == 5 and len(set(d.ids)) == 5
