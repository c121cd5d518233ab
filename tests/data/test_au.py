"""AU estimation: synfer's blendshape -> FACS table, the head pose, and the MediaPipe estimator (with the model
when ../shared/data holds it)."""

import importlib.util

import numpy as np
import pytest
from PIL import Image

from conftest import FERPLUS_DIR, SHARED_DATA
from synfer.annotate.au import (
    AU_RULES,
    BLENDSHAPE_NAMES,
    MEDIAPIPE_AUS,
    MEDIAPIPE_AUS_ALL,
    blendshapes_to_aus,
    create_estimator,
    head_pose_from_landmarks,
)
from synfer.annotate.au.base import PITCH_OFFSET_DEG, AUEstimator
from synfer.annotate.au.mapping import AURule, check_rules, mirror_rule, rule_blendshapes
from synfer.schema import AU_CATALOGUE, EMFACS_PROTOTYPES, AUSet, au_code

MODEL = SHARED_DATA / "mediapipe_face_landmarker" / "face_landmarker.task"
REFERENCE = FERPLUS_DIR / "reference_blendshapes.npz"
needs_model = pytest.mark.skipif(
    not MODEL.is_file() or importlib.util.find_spec("ai_edge_litert") is None or importlib.util.find_spec("mediapipe")
    is None, reason=f"MediaPipe model not found at {MODEL}, or ai-edge-litert / mediapipe not installed")
needs_reference = pytest.mark.skipif(not (REFERENCE.is_file() and (FERPLUS_DIR / "FER2013Test").is_dir()),
                                     reason=f"FER+ reference blendshapes not found at {REFERENCE}")


def bs_vector(**scores):
    v = np.zeros(len(BLENDSHAPE_NAMES), np.float32)
    for name, value in scores.items():
        v[BLENDSHAPE_NAMES.index(name)] = value
    return v


def mirror_vector(v):
    return np.array([v[BLENDSHAPE_NAMES.index(mirror_rule(n))] for n in BLENDSHAPE_NAMES], np.float32)


# -- the table --------------------------------------------------------------------------------------------------


def test_table_is_well_formed():
    check_rules()
    assert all(au_code(c) == c for c in AU_RULES)
    assert set(MEDIAPIPE_AUS_ALL.names) == set(AU_RULES)
    assert set(MEDIAPIPE_AUS.names) <= set(AU_RULES) and len(MEDIAPIPE_AUS) >= 20
    assert all(isinstance(r, AURule) and r.why for r in AU_RULES.values())
    for code in AU_RULES:  # lateral columns only for AUs that FACS codes by side
        if "_" in code:
            assert AU_CATALOGUE[int(code[2:4])].lateral, code
    # every AU of the EMFACS prototypes that blendshapes can express is in the default set
    for proto in EMFACS_PROTOTYPES.values():
        for code in proto:
            assert code in MEDIAPIPE_AUS.names or code[:4] in MEDIAPIPE_AUS.names or code == "AU23", code


@pytest.mark.parametrize("rules,match", [
    ({"AU12": AURule("mouthSmileMiddle", "x")}, "unknown blendshape"),
    ({"au12": AURule("mouthSmileLeft", "x")}, "AU12"),
    ({"AU12": AURule(("median", "mouthSmileLeft"), "x")}, "op"),
    ({"AU25": AURule(("sub", "jawOpen"), "x")}, "number of arguments"),
])
def test_bad_rules_are_refused(rules, match):
    with pytest.raises(ValueError, match=match):
        check_rules(rules)


def test_lateral_columns_mirror_each_other():
    rng = np.random.default_rng(0)
    for _ in range(20):
        v = rng.random(len(BLENDSHAPE_NAMES)).astype(np.float32)
        a = dict(zip(MEDIAPIPE_AUS_ALL.names, blendshapes_to_aus(v, MEDIAPIPE_AUS_ALL), strict=True))
        m = dict(zip(MEDIAPIPE_AUS_ALL.names, blendshapes_to_aus(mirror_vector(v), MEDIAPIPE_AUS_ALL), strict=True))
        for code in AU_RULES:
            if code.endswith("_L"):
                assert a[code] == pytest.approx(m[code[:4] + "_R"])
                assert a[code[:4]] == pytest.approx((a[code] + a[code[:4] + "_R"]) / 2)
            elif "_" not in code:  # a bilateral column does not care which side acts
                assert a[code] == pytest.approx(m[code], abs=1e-6)
    for code, row in AU_RULES.items():  # ARKit Left (the subject's left) feeds FACS _L only
        names = rule_blendshapes(row.rule)
        if code.endswith("_L"):
            assert all(not n.endswith("Right") for n in names) and any(n.endswith("Left") for n in names)
        if code.endswith("_R"):
            assert all(not n.endswith("Left") for n in names)


def test_hand_made_vectors():
    aus = AUSet(("AU01", "AU06", "AU07", "AU12", "AU12_L", "AU12_R", "AU25", "AU26", "AU28", "AU43"))

    def get(**scores):
        return dict(zip(aus.names, blendshapes_to_aus(bs_vector(**scores), aus), strict=True))

    assert all(v == 0 for v in get().values())
    smile = get(mouthSmileLeft=0.9, mouthSmileRight=0.7, eyeSquintLeft=0.5, eyeSquintRight=0.5)
    assert smile["AU12"] == pytest.approx(0.8) and smile["AU12_L"] == pytest.approx(0.9)
    assert smile["AU12_R"] == pytest.approx(0.7) and smile["AU07"] == pytest.approx(0.5)
    assert smile["AU06"] == pytest.approx(0.5)  # eye narrowing with a smile stands in for cheekSquint
    assert get(eyeSquintLeft=0.5, eyeSquintRight=0.5)["AU06"] == 0  # no smile, no inferred AU06
    assert get(cheekSquintLeft=0.6, cheekSquintRight=0.6)["AU06"] == pytest.approx(0.6)
    jaw = get(jawOpen=0.8, browInnerUp=0.6)
    assert (jaw["AU26"], jaw["AU25"], jaw["AU01"]) == pytest.approx((0.8, 0.8, 0.6))
    assert get(jawOpen=0.5, mouthClose=0.5)["AU25"] == 0  # lips closed over an open jaw
    assert get(mouthRollUpper=0.9, mouthRollLower=0.3)["AU28"] == pytest.approx(0.3)
    assert get(eyeBlinkLeft=1.0, eyeBlinkRight=0.6)["AU43"] == pytest.approx(0.8)
    out = blendshapes_to_aus(np.full((3, 52), 2.0), MEDIAPIPE_AUS_ALL)
    assert out.shape == (3, len(MEDIAPIPE_AUS_ALL)) and out.max() <= 1.0 and out.dtype == np.float32


def test_mapping_errors():
    with pytest.raises(ValueError, match="52"):
        blendshapes_to_aus(np.zeros((2, 51)))
    with pytest.raises(ValueError, match="AU11"):
        blendshapes_to_aus(np.zeros((1, 52)), AUSet(("AU11",)))


# -- head pose --------------------------------------------------------------------------------------------------


def face_points(yaw=0.0, pitch=0.0, roll=0.0):
    """Landmarks 33, 263, 10, 152 of a frontal face (x right, y down, z away from the camera), rotated."""
    lm = np.zeros((478, 3))
    lm[33], lm[263], lm[10], lm[152] = (-1, 0, 0), (1, 0, 0), (0, -1.3, 0), (0, 1.3, 0)
    # a real frontal face's chin-forehead line is not upright
    lm[10] = _rot_x(np.radians(-PITCH_OFFSET_DEG)) @ lm[10]
    lm[152] = _rot_x(np.radians(-PITCH_OFFSET_DEG)) @ lm[152]
    r = _rot_z(np.radians(roll)) @ _rot_x(np.radians(pitch)) @ _rot_y(np.radians(yaw))
    return (lm @ r.T)[None]


def _rot_y(a):  # the facing direction (0, 0, -1) turns toward +x (the subject's left) for a > 0
    return np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])


def _rot_x(a):  # the facing direction turns up (-y) for a > 0
    return np.array([[1, 0, 0], [0, np.cos(a), np.sin(a)], [0, -np.sin(a), np.cos(a)]])


def _rot_z(a):  # clockwise in the image (x right, y down) for a > 0
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


@pytest.mark.parametrize("yaw,pitch,roll", [(0, 0, 0), (20, 0, 0), (-30, 0, 0), (0, 15, 0), (0, -15, 0),
                                            (0, 0, 12), (0, 0, -12)])
def test_head_pose_signs(yaw, pitch, roll):
    got = head_pose_from_landmarks(face_points(yaw, pitch, roll))[0]
    assert got == pytest.approx([yaw, pitch, roll], abs=1.0)


# -- the estimator ----------------------------------------------------------------------------------------------


def test_missing_model_says_how_to_get_it(tmp_path):
    from synfer.annotate.au.mediapipe_estimator import MediaPipeAUEstimator

    for fast in (True, False):
        with pytest.raises(FileNotFoundError, match=r"face_landmarker\.task.*--au-model"):
            MediaPipeAUEstimator(tmp_path / "missing.task", fast=fast)
    with pytest.raises(FileNotFoundError, match="--au-model"):
        create_estimator("mediapipe", None)
    (tmp_path / "bad.task").write_text("not a zip")
    with pytest.raises(ValueError, match="not a zip"):
        MediaPipeAUEstimator(tmp_path / "bad.task")
    with pytest.raises(ValueError, match="Unknown AU estimator"):
        create_estimator("opengraphau", None)


def test_pad_and_resize_geometry():
    from synfer.annotate.au.mediapipe_estimator import pad_and_resize

    x, scale, left, top = pad_and_resize(np.zeros((48, 48), np.uint8))
    assert x.shape == (256, 256, 3) and x.dtype == np.float32
    assert (scale, left, top) == (72 / 256, 12.0, 12.0)  # 12 px a side on 48 px, as the reference
    _, scale, left, top = pad_and_resize(np.zeros((40, 60, 3), np.uint8))
    assert (scale, left, top) == (90 / 256, 15.0, 25.0)  # squared first, then the margin


@pytest.fixture(scope="module")
def fast_estimator():
    if not MODEL.is_file():
        pytest.skip(f"MediaPipe model not found at {MODEL}")
    pytest.importorskip("ai_edge_litert")
    from synfer.annotate.au.mediapipe_estimator import MediaPipeAUEstimator

    return MediaPipeAUEstimator(MODEL, fast=True, num_threads=1)


def _test_images(n):
    names = sorted(p.name for p in (FERPLUS_DIR / "FER2013Test").glob("*.png"))
    step = max(1, len(names) // n)
    return names[::step][:n]


@pytest.mark.data
@needs_reference
def test_fast_path_matches_reference(fast_estimator):
    ref = np.load(REFERENCE, allow_pickle=False)
    row = {n: i for i, n in enumerate(ref["ferplus_name"].tolist())}
    assert tuple(ref["blendshape_names"].tolist()) == BLENDSHAPE_NAMES
    names = _test_images(300)
    images = [Image.open(FERPLUS_DIR / "FER2013Test" / n) for n in names]
    result = fast_estimator.estimate(images)
    idx = [row[n] for n in names]
    mad = np.abs(result.blendshapes - ref["blendshapes"][idx].astype(np.float32)).mean()
    assert mad < 0.02, mad
    assert np.abs(result.face_presence - ref["face_presence"][idx].astype(np.float32)).max() < 0.01
    assert isinstance(fast_estimator, AUEstimator)
    assert result.aus.shape == (300, len(MEDIAPIPE_AUS)) and result.landmarks.shape == (300, 478, 3)
    # the same faces as a uint8 batch array give the same result
    batch = np.stack([np.asarray(im) for im in images[:8]])
    np.testing.assert_allclose(fast_estimator.estimate(batch).aus, result.aus[:8], atol=1e-6)


@pytest.mark.data
@needs_model
def test_left_is_the_subjects_left(fast_estimator):
    """Closing the eye / raising the brow on the image's right (the subject's left) lights the _L side."""
    from synfer.annotate.au.mediapipe_estimator import pad_and_resize

    name = _test_images(20)[3]
    x, *_ = pad_and_resize(np.asarray(Image.open(FERPLUS_DIR / "FER2013Test" / name)))
    lm, _ = fast_estimator.landmarks_from_input(x)
    assert lm[263, 0] > lm[33, 0]  # landmark 263 (the subject's left eye corner) lies on the image's right
    base = fast_estimator.blendshapes_from_landmarks(lm)
    left_eye = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466, *range(473, 478)]
    closed = lm.copy()
    centre = closed[left_eye, 1].mean()
    closed[left_eye, 1] = centre + 0.1 * (closed[left_eye, 1] - centre)
    b = fast_estimator.blendshapes_from_landmarks(closed)
    i_l, i_r = BLENDSHAPE_NAMES.index("eyeBlinkLeft"), BLENDSHAPE_NAMES.index("eyeBlinkRight")
    assert b[i_l] - base[i_l] > 0.1 and b[i_r] - base[i_r] < 0.05
    raised = lm.copy()
    raised[[276, 283, 282, 295, 285, 300, 293, 334, 296, 336], 1] -= 8
    aus = AUSet(("AU02_L", "AU02_R"))
    before = blendshapes_to_aus(base, aus)
    after = blendshapes_to_aus(fast_estimator.blendshapes_from_landmarks(raised), aus)
    assert after[0] - before[0] > 0.3 and after[1] <= before[1] + 0.05


@pytest.mark.data
@needs_model
def test_faceless_images_do_not_crash(fast_estimator):
    rng = np.random.default_rng(0)
    images = [Image.new("L", (48, 48), 128), Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
              Image.new("RGBA", (30, 50), (10, 200, 30, 255))]
    r = fast_estimator.estimate(images)
    assert r.face_presence.shape == (3,) and np.all(r.face_presence < 0.5)
    assert np.all(np.isfinite(r.aus)) and r.aus.min() >= 0 and r.aus.max() <= 1
    assert fast_estimator.estimate([]).aus.shape == (0, len(MEDIAPIPE_AUS))


@pytest.mark.data
@needs_model
def test_full_path_finds_faces_and_reports_none():
    from synfer.annotate.au.mediapipe_estimator import MediaPipeAUEstimator, pad_and_resize

    with MediaPipeAUEstimator(MODEL, fast=False) as est:
        faces = []
        for name in _test_images(12)[:6]:
            x, *_ = pad_and_resize(np.asarray(Image.open(FERPLUS_DIR / "FER2013Test" / name)))
            faces.append(Image.fromarray((x * 255).round().astype(np.uint8)))
        r = est.estimate(faces + [Image.new("RGB", (200, 200), (128, 128, 128))])
        assert r.face_presence[:6].mean() >= 0.5  # most upscaled FER+ crops are found by the detector
        assert r.face_presence[-1] == 0 and np.all(r.aus[-1] == 0) and r.pose_dict(6) is None
        assert est.timings["landmarker"] > 0
