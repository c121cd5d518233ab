"""The app's actions without a browser: sliders follow the generator, presets are its targets, faces are measured
by models that did not guide them, and every bad input is a message, not a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FERPLUS_DIR, SHARED_DATA, needs_ferplus
from synfer.app.studio import Studio, StudioError
from synfer.core.assets import resolve
from synfer.generator.au_targets import expression_au_targets
from synfer.schema import au_info


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Studio:
    return Studio("bundled", tmp_path_factory.mktemp("app"))


def test_sliders_and_presets_follow_the_generator(studio: Studio) -> None:
    sliders = studio.sliders()
    assert [s.column for s in sliders] == list(studio.au_names) and len(sliders) == 22
    twelve = sliders[studio.au_names.index("AU12")]
    assert twelve.label == "AU12 Lip Corner Puller" and twelve.region == "mouth" and "lip corners" in twelve.info
    assert all(s.region == au_info(s.column).region for s in sliders)
    presets = studio.presets("happy")
    mean = expression_au_targets(["happiness"], studio.au_names, "auto", resolve("generator", "bundled"))[0]
    assert np.allclose(presets["class mean"], mean.tolist())
    assert presets["EMFACS prototype"][studio.au_names.index("AU12")] > 0.5  # 6 + 12 for happiness


def test_generate_draws_and_measures_with_models_that_did_not_guide(studio: Studio) -> None:
    happy = studio.presets("happiness")["class mean"]
    faces = studio.generate("happiness", happy, n=3, seed=5)
    assert len(faces.images) == 3 and faces.images[0].size == (48, 48) and faces.target == happy
    assert faces.measured.shape == (3, 22) and 0 <= faces.measured.min() and faces.measured.max() <= 1
    assert abs(sum(faces.probabilities.values()) - 1) < 1e-4 and max(faces.probabilities, key=faces.probabilities.get)
    same = studio.generate("happiness", happy, n=3, seed=5)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(faces.images, same.images, strict=True))
    smile = [0.0] * 22
    smile[studio.au_names.index("AU12")] = 1.0
    read = studio.generate("neutral", smile, n=4, seed=0).measured[:, studio.au_names.index("AU12")].mean()
    flat = studio.generate("neutral", [0.0] * 22, n=4, seed=0).measured[:, studio.au_names.index("AU12")].mean()
    assert read > flat  # the AU slider moves what the estimator reads back


def test_reading_aus_from_a_face_and_editing_it(studio: Studio) -> None:
    face = studio.generate("surprise", studio.presets("surprise")["class mean"], n=1, seed=2).images[0]
    aus = studio.aus_from_face(face)
    assert len(aus) == 22 and all(0 <= a <= 1 for a in aus)
    before, after, pasted = studio.edit(face, "happiness", studio.presets("happiness")["class mean"], 0.6)
    assert before.size == after.size == (48, 48) and pasted is None  # no face model: the upload is the crop
    assert np.abs(np.asarray(before, float) - np.asarray(after, float)).mean() > 1  # the edit changed the face


@pytest.mark.parametrize("call, message", [
    (lambda s: s.generate("grumpy", None), "unknown expression"),
    (lambda s: s.generate("happiness", None, n=0), "1..16"),
    (lambda s: s.generate("happiness", [2.0] * 22), "0..1"),
    (lambda s: s.generate("happiness", [0.5] * 3), "22 values"),
    (lambda s: s.aus_from_face("not an image"), "not an image"),
    (lambda s: s.edit(None, "happiness", None), "no image"),
    (lambda s: s.edit(Image.new("L", (48, 48)), "happiness", None, strength=0.0), "strength"),
])
def test_bad_input_is_a_message(studio: Studio, call, message: str) -> None:
    with pytest.raises(StudioError, match=message):
        call(studio)


def test_a_huge_upload_is_scaled_down(studio: Studio) -> None:
    aus = studio.aus_from_face(Image.new("RGB", (6000, 4000), (120, 110, 100)))
    assert len(aus) == 22


def test_the_guide_may_not_judge(tmp_path: Path) -> None:
    with pytest.raises(StudioError, match="guidance classifier"):
        Studio("bundled", tmp_path, judge="ferplus-resnet-s", guide="ferplus-resnet-s")


def test_any_pipeline_folder_gives_its_own_sliders(pipe_dir: Path, tmp_path: Path) -> None:
    tiny = Studio(str(pipe_dir), tmp_path)
    assert [s.column for s in tiny.sliders()] == ["AU01", "AU12"]
    faces = tiny.generate("happiness", [0.2, 0.9], n=2)
    assert len(faces.images) == 2 and faces.measured.shape == (2, 2)
    assert tiny.presets("happiness")["EMFACS prototype"][1] > 0.5 and "class mean" not in tiny.presets("happiness")


MODEL = SHARED_DATA / "mediapipe_face_landmarker" / "face_landmarker.task"


@needs_ferplus
@pytest.mark.skipif(not MODEL.is_file(), reason="needs MediaPipe's face_landmarker.task in ../shared/data")
def test_photos_are_aligned_edited_and_pasted_back(tmp_path: Path) -> None:
    """With a face model: a FER+ test face placed in a larger photo is found, edited and pasted back where it
    was; a photo without a face is a message."""
    face = Image.open(sorted((FERPLUS_DIR / "FER2013Test").glob("*.png"))[0]).convert("L").resize((160, 160))
    photo = Image.new("L", (360, 320), 128)
    photo.paste(face, (120, 60))
    studio = Studio("bundled", tmp_path, face_model=MODEL)
    try:
        assert len(studio.aus_from_face(photo)) == 22
        before, after, pasted = studio.edit(photo, "happiness", studio.presets("happiness")["class mean"], 0.6)
        assert pasted is not None and pasted.size == photo.size
        far = (slice(0, 40), slice(0, 40))  # a corner far from the face keeps its pixels
        assert np.abs(np.asarray(pasted.convert("L"), float)[far] - 128).max() < 2
        with pytest.raises(StudioError, match="no face found"):
            studio.edit(Image.new("L", (300, 300), 128), "happiness", None)
    finally:
        studio.close()
