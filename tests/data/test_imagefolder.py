"""ImageFolder importer: both layouts, class aliases, label order, ids, ignored files, resume, bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import gray_face, tree_state
from synfer.core.dataset import DatasetError, DatasetFolder
from synfer.core.options import ImportOptions
from synfer.importers import imagefolder
from synfer.importers.common import BadInputError, UniqueIds
from synfer.importers.imagefolder import import_imagefolder
from synfer.schema import BASIC7, FERPLUS8


def put(path: Path, seed: int, size: int = 16) -> Path:
    """A tiny image, in the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = gray_face(seed, size)
    (im.convert("RGB") if path.suffix.lower() in (".jpg", ".jpeg") else im).save(path)
    return path


def flat_tree(root: Path, classes=("Happy", "angry", "sadness")) -> Path:
    for k, name in enumerate(classes):
        put(root / name / "a.png", 10 * k)
        put(root / name / "b.JPG", 10 * k + 1)
    (root / "README.txt").write_text("not an image")
    (root / classes[0] / "notes.csv").write_text("x")
    return root


def test_flat_layout(tmp_path):
    root = flat_tree(tmp_path / "src")
    (root / "Happy" / ".ipynb_checkpoints").mkdir()
    put(root / "Happy" / ".ipynb_checkpoints" / "a.png", 0)  # tool litter: not an image of the class
    before = tree_state(root)
    out = import_imagefolder(root, tmp_path / "out", split="val")
    assert tree_state(root) == before
    d = DatasetFolder(out)
    # Auto order: happiness, anger, sadness are not exactly a built-in set, so they are sorted.
    assert d.expressions == ("anger", "happiness", "sadness")
    assert d.counts() == {"val": {"anger": 2, "happiness": 2, "sadness": 2}}
    assert sorted(d.ids) == sorted(f"val-{c}-{s}" for c in ("anger", "happiness", "sadness") for s in "ab")
    assert d.header.stats["ignored_files"] == 3 and d.header.stats["layout"] == "class"
    r = {r.id: r for r in d.records()}["val-happiness-b"]
    assert r.label_probs == [0.0, 1.0, 0.0] and r.meta == {"class_folder": "Happy"}
    assert r.source == "imagefolder:Happy/b.JPG"
    img = d.load_image(r.image)  # the JPEG became a PNG
    assert img.format == "PNG" and img.size == (16, 16)
    # PNGs without conversion are copied byte for byte
    assert (out / "images" / "val-happiness-a.png").read_bytes() == (root / "Happy" / "a.png").read_bytes()
    assert d.header.provenance[-1]["config"]["source"] == str(root.resolve())
    assert d.header.licence == ""  # no FER2013 licence note for arbitrary folders


def test_split_layout_and_builtin_order(tmp_path):
    root = tmp_path / "src"
    for split in ("train", "Validation", "test"):
        for k, name in enumerate(BASIC7.names):
            put(root / split / name.upper() / f"{k}.png", k)
    out = import_imagefolder(root, tmp_path / "out")
    d = DatasetFolder(out, expect_expressions=BASIC7.names)  # 7 basic classes -> FER2013 order
    assert set(d.counts()) == {"train", "val", "test"} and len(d) == 21
    assert d.header.stats["layout"] == "split/class"
    out8 = import_imagefolder(root, tmp_path / "out8", expressions=["ferplus8"])
    assert DatasetFolder(out8).expressions == FERPLUS8.names
    custom = import_imagefolder(root / "train", tmp_path / "o3", expressions=list(BASIC7.names[::-1]))
    assert DatasetFolder(custom).expressions == BASIC7.names[::-1]


def test_ids_are_sanitised_and_unique(tmp_path):
    root = tmp_path / "src"
    put(root / "happy" / "my face (1).png", 1)
    put(root / "happy" / "my face [1].jpg", 2)
    put(root / "happy" / "Joy.png", 3)
    put(root / "happy" / "joy.bmp", 4)
    put(root / "happy" / "deep" / "x.webp", 5)
    out = import_imagefolder(root, tmp_path / "out")
    ids = DatasetFolder(out).ids
    assert sorted(ids) == sorted(["train-happiness-deep_x", "train-happiness-Joy", "train-happiness-joy-2",
                                  "train-happiness-my_face_1_", "train-happiness-my_face_1_-2"])
    out2 = import_imagefolder(root, tmp_path / "out2")
    assert DatasetFolder(out2).ids == ids  # deterministic
    new = UniqueIds()
    assert [new("a/b"), new("a b"), new("..x"), new("A_B")] == ["a_b", "a_b-2", "x", "A_B-3"]


def test_unknown_class_folder(tmp_path):
    root = flat_tree(tmp_path / "src", classes=("happy", "sad", "confused"))
    with pytest.raises(BadInputError, match=r"confused: class folder 'confused' \(2 images\) is not an "):
        import_imagefolder(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    out = import_imagefolder(root, tmp_path / "out", importing=ImportOptions(skip_bad=True))
    d = DatasetFolder(out)
    assert d.expressions == ("happiness", "sadness") and len(d) == 4
    assert d.header.stats["skipped"]["unknown_class"]["count"] == 1
    assert "confused" in d.header.stats["skipped"]["unknown_class"]["examples"][0]


def test_class_not_in_given_set(tmp_path):
    root = flat_tree(tmp_path / "src", classes=("happy", "contempt"))
    with pytest.raises(BadInputError, match=r"contempt: class folder 'contempt' .* not in expression set b"):
        import_imagefolder(root, tmp_path / "out", expressions=["basic7"])
    out = import_imagefolder(root, tmp_path / "out", expressions=["basic7"], importing=ImportOptions(skip_bad=True))
    d = DatasetFolder(out, expect_expressions=BASIC7.names)
    assert d.counts() == {"train": {"happiness": 2}}
    with pytest.raises(BadInputError, match="none of the class folders"):
        import_imagefolder(root, tmp_path / "o2", expressions=["anger"], importing=ImportOptions(skip_bad=True))


def test_corrupt_and_unreadable_images(tmp_path):
    root = flat_tree(tmp_path / "src")
    (root / "angry" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (root / "sadness" / "fake.png").write_bytes(b"not a png at all")
    with pytest.raises(BadInputError, match=r"broken\.jpg: not a readable image"):
        import_imagefolder(root, tmp_path / "out")
    out = import_imagefolder(root, tmp_path / "out2", importing=ImportOptions(skip_bad=True))
    d = DatasetFolder(out)
    assert len(d) == 6 and d.header.stats["skipped"]["bad_image"]["count"] == 2
    examples = " ".join(d.header.stats["skipped"]["bad_image"]["examples"])
    assert "broken.jpg" in examples and "fake.png: not a PNG" in examples


def test_image_options(tmp_path):
    root = flat_tree(tmp_path / "src")
    out = import_imagefolder(root, tmp_path / "out", importing=ImportOptions(image_mode="RGB", image_size=24))
    d = DatasetFolder(out)
    for rel in d.column("image"):
        im = d.load_image(rel)
        assert im.mode == "RGB" and im.size == (24, 24)


def test_resume_twice_writes_no_duplicates(tmp_path):
    root = flat_tree(tmp_path / "src", classes=("happy", "sad", "confused"))
    out = import_imagefolder(root, tmp_path / "out", importing=ImportOptions(skip_bad=True))
    for _ in range(2):
        import_imagefolder(root, out, importing=ImportOptions(skip_bad=True, resume=True))
    d = DatasetFolder(out)
    assert len(d) == 4 and len(set(d.ids)) == 4
    assert d.header.stats["skipped"]["unknown_class"]["count"] == 1  # not once per run
    with pytest.raises(DatasetError, match="already exists"):
        import_imagefolder(root, out, importing=ImportOptions(skip_bad=True))


def test_interrupted_import_resumes(tmp_path, monkeypatch):
    root = flat_tree(tmp_path / "src")
    real, calls = imagefolder.image_for_writer, []

    def dies_on_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(imagefolder, "image_for_writer", dies_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        import_imagefolder(root, tmp_path / "out")
    assert len(DatasetFolder(tmp_path / "out", allow_incomplete=True)) == 3
    monkeypatch.setattr(imagefolder, "image_for_writer", real)
    import_imagefolder(root, tmp_path / "out", importing=ImportOptions(resume=True))
    d = DatasetFolder(tmp_path / "out")
    assert d.header.complete and len(d) == 6 and len(set(d.ids)) == 6
    assert len(calls) == 4  # the resumed run did not redo the first three
    first = d.load_image("images/train-anger-a.png")
    assert np.array_equal(np.asarray(first), np.asarray(Image.open(root / "angry" / "a.png")))


def test_not_a_folder(tmp_path):
    with pytest.raises(BadInputError, match="not a folder"):
        import_imagefolder(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no class folders found"):
        import_imagefolder(tmp_path / "empty", tmp_path / "out")
