"""Face detection and alignment of ordinary photos (synfer.annotate.align) and its use by prepare, edit and layout.

The photos are made at run time from real FER+ test faces (../shared/data; skipped when absent): a face scaled up,
turned and placed off-centre on a plain background, as a snapshot would hold it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FERPLUS_DIR, SHARED_DATA
from synfer.annotate.align import Alignment, FaceAligner, paste_back, similarity
from synfer.core.options import SamplerOptions

MODEL = SHARED_DATA / "mediapipe_face_landmarker" / "face_landmarker.task"
needs_model = pytest.mark.skipif(not MODEL.is_file() or not (FERPLUS_DIR / "FER2013Test").is_dir(),
                                 reason=f"MediaPipe model ({MODEL}) or the FER+ folder not found")


def test_similarity_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = math.radians(25), 1.7, np.array([12.0, -4.0])
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    m = similarity(src, src @ rot.T + shift)
    np.testing.assert_allclose(m, np.hstack([rot, shift[:, None]]), atol=1e-9)
    a = Alignment(((2.0, 0.0, 5.0), (0.0, 2.0, 7.0)), 48, (200, 100))
    assert Alignment.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    np.testing.assert_allclose(a.inverse(), [[0.5, 0, -2.5], [0, 0.5, -3.5]])


def real_face(index: int = 0) -> Image.Image:
    files = sorted((FERPLUS_DIR / "FER2013Test").glob("*.png"))
    return Image.open(files[index]).convert("L")


def photo_of(face: Image.Image, angle: float, at: tuple[int, int] = (150, 40)) -> Image.Image:
    """A 420 x 300 'photo': the face at 160 px, turned ``angle`` degrees counter-clockwise, on a plain background."""
    big = face.resize((160, 160), Image.Resampling.BICUBIC).rotate(angle, Image.Resampling.BICUBIC, expand=True,
                                                                    fillcolor=90)
    photo = Image.new("L", (420, 300), 90)
    photo.paste(big, at)
    return photo


@needs_model
def test_aligned_crops_are_upright_and_the_same_face() -> None:
    face = real_face()
    with FaceAligner(MODEL, size=48) as aligner:
        upright, a0 = aligner.align(photo_of(face, 0))
        turned, a1 = aligner.align(photo_of(face, 20, at=(60, 20)))
        other, _ = aligner.align(photo_of(real_face(5), 0))
        assert aligner.align(Image.new("L", (200, 200), 128)) is None  # no face
    # crop -> photo rotation: the turned photo's crop was taken 20 degrees round
    angles = [math.degrees(math.atan2(a.matrix[0][1], a.matrix[0][0])) for a in (a0, a1)]
    assert abs(angles[0]) < 3 and abs(angles[1] - 20) < 3
    def corr(a: Image.Image, b: Image.Image) -> float:
        return float(np.corrcoef(np.asarray(a, float).ravel(), np.asarray(b, float).ravel())[0, 1])

    assert corr(upright, turned) > 0.8 and corr(upright, turned) > corr(upright, other) + 0.15
    assert upright.size == (48, 48) and upright.mode == "L"


@needs_model
def test_paste_back_puts_the_crop_where_it_came_from() -> None:
    photo = photo_of(real_face(1), 15)
    with FaceAligner(MODEL, size=96) as aligner:
        crop, where = aligner.align(photo)
    back = np.asarray(paste_back(photo, crop, where), float)
    before = np.asarray(photo, float)
    face_box = (slice(60, 220), slice(170, 330))
    assert np.abs(back[face_box] - before[face_box]).mean() < 4  # the crop itself, resampled twice
    assert np.array_equal(back[:, :100], before[:, :100])  # far from the face: untouched
    changed = paste_back(photo, Image.new("L", crop.size, 255), where)
    assert np.asarray(changed, float)[face_box].mean() > before[face_box].mean() + 40


@needs_model
def test_edit_align_writes_pasted_photos(tmp_path: Path) -> None:
    from synfer.core.dataset import DatasetFolder
    from synfer.synthesize.edit import edit

    (tmp_path / "photos").mkdir()
    photo_of(real_face(2), 10).save(tmp_path / "photos" / "snap.png")
    Image.new("L", (200, 200), 128).save(tmp_path / "photos" / "wall.png")
    with pytest.warns(UserWarning, match="No face found in 1 of 2 images, left out: wall"):
        out = edit([tmp_path / "photos"], tmp_path / "edits", expression="happiness", align=str(MODEL), preview=False, sampling=SamplerOptions(num_inference_steps=4))
    (rec,) = DatasetFolder(out).records()
    where = Alignment.from_dict(rec.meta["aligned_crop"])
    assert rec.meta["source"] == "snap" and where.photo_size == (420, 300)
    pasted = Image.open(out / "pasted" / f"{rec.id}.png")
    assert pasted.size == (420, 300)
    far = (slice(0, 300), slice(0, 60))
    assert np.array_equal(np.asarray(pasted)[far], np.asarray(Image.open(tmp_path / "photos" / "snap.png"))[far])


@needs_model
def test_prepare_align_writes_aligned_crops(tmp_path: Path) -> None:
    from synfer.annotate.prepare import prepare
    from synfer.core.dataset import DatasetFolder
    from synfer.importers.imagefolder import import_imagefolder

    root = tmp_path / "photos"
    for i, name in enumerate(("happiness", "sadness")):
        (root / "train" / name).mkdir(parents=True)
        photo_of(real_face(3 + i), 12 * (i + 1)).save(root / "train" / name / f"p{i}.png")
    Image.new("L", (200, 200), 128).save(root / "train" / "sadness" / "wall.png")
    imported = import_imagefolder(root, tmp_path / "imported")
    out = prepare(imported, tmp_path / "prepared", au_model=str(MODEL), estimator="mediapipe-full",
                  align=str(MODEL), align_size=64)
    folder = DatasetFolder(out)
    with_face = [r for r in folder.records() if "aligned_crop" in r.meta]
    assert len(with_face) == 2 and all(r.aus is not None for r in with_face)
    assert all(folder.load_image(r.image).size == (64, 64) for r in with_face)
    (blank,) = [r for r in folder.records() if "aligned_crop" not in r.meta]
    assert blank.aus is None and blank.meta["face_presence"] == 0.0
    assert json.loads((out / "dataset.json").read_text())["provenance"][-1]["config"]["align"]["size"] == 64


@needs_model
def test_generate_layout_align_starts_from_aligned_photos(tmp_path: Path) -> None:
    from synfer.core.dataset import DatasetFolder
    from synfer.synthesize.generate import generate

    (tmp_path / "photos").mkdir()
    photo_of(real_face(6), -15).save(tmp_path / "photos" / "snap.png")
    Image.new("L", (200, 200), 128).save(tmp_path / "photos" / "wall.png")
    with pytest.warns(UserWarning, match="left out: wall"):
        out = generate(tmp_path / "syn", per_class=1, expressions=["happiness"], layout=tmp_path / "photos", layout_align=str(MODEL), sampling=SamplerOptions(num_inference_steps=4))
    config = json.loads((out / "dataset.json").read_text())["provenance"][-1]["config"]
    assert config["layout"]["aligned_with"] == str(MODEL) and config["layout"]["faces"] == 1
    (rec,) = DatasetFolder(out).records()
    assert rec.meta["layout"]["face"] == "snap"
