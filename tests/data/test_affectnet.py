"""AffectNet importer: 8/7 classes, left-out codes, val_as, crops, layouts, resume, bad rows and images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import gray_face, tree_state
from synfer.core.dataset import DatasetError, DatasetFolder
from synfer.core.options import ImportOptions
from synfer.importers import affectnet
from synfer.importers.affectnet import AFFECTNET_LICENCE, import_affectnet
from synfer.importers.common import BadInputError
from synfer.schema import AFFECTNET7, AFFECTNET8

HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,"
          "arousal")
TRAIN = [("1/a.jpg", 1), ("1/b.jpg", 0), ("2/c.png", 7), ("2/d.jpg", 8), ("2/e.jpg", 10)]
VALID = [("3/f.jpg", 6), ("3/g.jpg", 9)]


def row(path: str, code: int, k: int = 0, box: str = "10,10,20,20") -> str:
    return f"{path},{box},1.5;2.5;3.5,{code},{0.1 * k:.2f},{-0.1 * k:.2f}"


def write_affectnet(root: Path, nested: bool = True, train_lines: list[str] | None = None) -> Path:
    """An AffectNet folder; ``nested`` uses the release's sub-folders, else everything directly under root."""
    lists = root / "Manually_Annotated_file_lists" if nested else root
    images = root / "Manually_Annotated_Images" if nested else root
    lists.mkdir(parents=True, exist_ok=True)
    for k, (path, _) in enumerate(TRAIN + VALID):
        (images / path).parent.mkdir(parents=True, exist_ok=True)
        im = gray_face(k, 40).convert("RGB")
        im.save(images / path, quality=95)
    train = train_lines if train_lines is not None else [row(p, c, k) for k, (p, c) in enumerate(TRAIN)]
    (lists / "training.csv").write_text("\n".join([HEADER, *train]) + "\n")
    # validation.csv without a header line, as in some copies of the release
    (lists / "validation.csv").write_text("\n".join(row(p, c, k) for k, (p, c) in enumerate(VALID)) + "\n")
    return root


def test_import_8_classes(tmp_path):
    root = write_affectnet(tmp_path / "src")
    before = tree_state(root)
    out = import_affectnet(root, tmp_path / "out")
    assert tree_state(root) == before
    d = DatasetFolder(out, expect_expressions=AFFECTNET8.names)
    assert d.counts() == {"train": {"happiness": 1, "neutral": 1, "contempt": 1}, "test": {"anger": 1}}
    assert d.ids == ["affectnet-1_a", "affectnet-1_b", "affectnet-2_c", "affectnet-3_f"]
    assert d.header.stats["excluded_by_label"] == {"train": {"none": 1, "non_face": 1},
                                                   "test": {"uncertain": 1}}
    assert "skipped" not in d.header.stats
    r = next(d.records())
    assert r.expression == "happiness" and r.label_probs == [0, 1.0, 0, 0, 0, 0, 0, 0]
    assert r.meta == {"valence": 0.0, "arousal": 0.0, "face_box": [10, 10, 20, 20], "affectnet_label": 1}
    assert r.source == "affectnet:1/a.jpg"
    im = d.load_image(r.image)
    assert im.format == "PNG" and im.size == (40, 40)  # the JPEG, whole, as PNG
    png_src = root / "Manually_Annotated_Images" / "2" / "c.png"
    assert (out / "images" / "affectnet-2_c.png").read_bytes() == png_src.read_bytes()
    assert d.header.licence == AFFECTNET_LICENCE and "research-only" in d.header.licence
    cfg = d.header.provenance[-1]["config"]
    assert cfg["source"] == str(root.resolve()) and cfg["val_as"] == "test" and cfg["classes"] == 8


def test_7_classes_val_split_and_crop(tmp_path):
    root = write_affectnet(tmp_path / "src")
    out = import_affectnet(root, tmp_path / "out", classes=7, val_as="val", crop=True)
    d = DatasetFolder(out, expect_expressions=AFFECTNET7.names)
    assert d.counts() == {"train": {"happiness": 1, "neutral": 1}, "val": {"anger": 1}}
    assert d.header.stats["excluded_by_label"]["train"] == {"contempt": 1, "none": 1, "non_face": 1}
    im = d.load_image("images/affectnet-1_b.png")
    assert im.size == (20, 20)  # the face box
    src = Image.open(root / "Manually_Annotated_Images" / "1" / "b.jpg").crop((10, 10, 30, 30))
    assert np.array_equal(np.asarray(im), np.asarray(src))
    sized = DatasetFolder(import_affectnet(root, tmp_path / "o2", crop=True, importing=ImportOptions(image_size=8, image_mode="L")))
    im = sized.load_image(sized.column("image")[0])
    assert im.size == (8, 8) and im.mode == "L"
    with pytest.raises(ValueError, match="classes=6"):
        import_affectnet(root, tmp_path / "o3", classes=6)
    with pytest.raises(ValueError, match="val_as='train'"):
        import_affectnet(root, tmp_path / "o3", val_as="train")


def test_flat_layout_and_missing_csvs(tmp_path):
    root = write_affectnet(tmp_path / "src", nested=False)
    d = DatasetFolder(import_affectnet(root, tmp_path / "out"))
    assert len(d) == 4
    assert d.header.provenance[-1]["config"]["images"] == str(root.resolve())
    (root / "validation.csv").unlink()
    assert set(DatasetFolder(import_affectnet(root, tmp_path / "o2")).column("split")) == {"train"}
    with pytest.raises(BadInputError, match="neither training.csv nor validation.csv"):
        import_affectnet(tmp_path, tmp_path / "o3")


@pytest.mark.parametrize("line, reason, message", [
    ("1/b.jpg,10,10,20,20,1;2,0,0.1", "malformed_row", r"expected 9 fields, found 8"),
    (row("1/b.jpg", 11), "unknown_label", r"expression '11' of 1/b\.jpg is not a code 0-10"),
    (row("1/b.jpg", 0).replace(",0.00,", ",high,", 1), "malformed_row", r"must be numbers; found .*'high'"),
    (row("../b.jpg", 0), "malformed_row", r"'\.\./b\.jpg' must be a relative path"),
    (row("1/a.jpg", 2), "duplicate_row", r"1/a\.jpg is already listed at .*training\.csv, line 2"),
])
def test_bad_rows(tmp_path, line, reason, message):
    lines = [row(p, c, k) for k, (p, c) in enumerate(TRAIN)]
    lines[1] = line  # line 3 of the file
    root = write_affectnet(tmp_path / "src", train_lines=lines)
    with pytest.raises(BadInputError, match=rf"training\.csv, line 3: .*{message}"):
        import_affectnet(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    d = DatasetFolder(import_affectnet(root, tmp_path / "out", importing=ImportOptions(skip_bad=True)))
    assert d.header.stats["skipped"][reason]["count"] == 1
    assert "affectnet-1_b" not in d.ids and len(d) == 3


def test_bad_header(tmp_path):
    root = write_affectnet(tmp_path / "src")
    csv = root / "Manually_Annotated_file_lists" / "training.csv"
    csv.write_text(csv.read_text().replace("valence", "val", 1))
    with pytest.raises(BadInputError, match=r"training\.csv, line 1: header lacks column\(s\) \['valence'\]"):
        import_affectnet(root, tmp_path / "out", importing=ImportOptions(skip_bad=True))


def test_missing_corrupt_and_off_image(tmp_path):
    root = write_affectnet(tmp_path / "src")
    images = root / "Manually_Annotated_Images"
    (images / "1" / "b.jpg").unlink()
    with pytest.raises(BadInputError, match=r"1/b\.jpg: image file not found.*training\.csv, line 3"):
        import_affectnet(root, tmp_path / "out")
    (images / "3" / "f.jpg").write_bytes(b"\xff\xd8 not really")
    d = DatasetFolder(import_affectnet(root, tmp_path / "out2", importing=ImportOptions(skip_bad=True)))
    skipped = d.header.stats["skipped"]["bad_image"]
    assert skipped["count"] == 2 and len(d) == 2
    assert "f.jpg: not a readable image" in skipped["examples"][1]
    assert "validation.csv, line 1" in skipped["examples"][1]
    lines = [row(p, c, k, box="100,100,20,20" if k == 0 else "10,10,20,20") for k, (p, c) in enumerate(TRAIN)]
    root2 = write_affectnet(tmp_path / "src2", train_lines=lines)
    with pytest.raises(BadInputError, match=r"a\.jpg: face box \(100, 100, 20, 20\) lies outside"):
        import_affectnet(root2, tmp_path / "out3", crop=True)


def test_resume_twice_writes_no_duplicates(tmp_path):
    root = write_affectnet(tmp_path / "src")
    (root / "Manually_Annotated_Images" / "1" / "b.jpg").unlink()
    out = import_affectnet(root, tmp_path / "out", importing=ImportOptions(skip_bad=True))
    for _ in range(2):
        import_affectnet(root, out, importing=ImportOptions(skip_bad=True, resume=True))
    d = DatasetFolder(out)
    assert len(d) == 3 and len(set(d.ids)) == 3
    assert d.header.stats["skipped"]["bad_image"]["count"] == 1
    assert d.header.stats["excluded_by_label"]["train"] == {"none": 1, "non_face": 1}
    with pytest.raises(DatasetError, match="already exists"):
        import_affectnet(root, out, importing=ImportOptions(skip_bad=True))


def test_interrupted_import_resumes(tmp_path, monkeypatch):
    root = write_affectnet(tmp_path / "src")
    real, calls = affectnet.image_for_writer, []

    def dies_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(affectnet, "image_for_writer", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        import_affectnet(root, tmp_path / "out")
    assert DatasetFolder(tmp_path / "out", allow_incomplete=True).ids == ["affectnet-1_a", "affectnet-1_b"]
    monkeypatch.setattr(affectnet, "image_for_writer", real)
    import_affectnet(root, tmp_path / "out", importing=ImportOptions(resume=True))
    d = DatasetFolder(tmp_path / "out")
    assert d.header.complete and d.ids == ["affectnet-1_a", "affectnet-1_b", "affectnet-2_c", "affectnet-3_f"]
