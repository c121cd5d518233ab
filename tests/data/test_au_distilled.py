"""The distilled AU estimator: training learns a teacher, the model is an AUEstimator and differentiable, orders
and kinds are checked on load, flips swap lateral columns, and the bundled one tracks MediaPipe on real faces."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FERPLUS_DIR, SHARED_DATA
from synfer.annotate.au import create_estimator
from synfer.annotate.au.distill import (
    _augment,
    _flip_permutation,
    au_agreement,
    pearson_per_column,
    train_au_estimator,
)
from synfer.annotate.au.distilled import DistilledAUEstimator
from synfer.core.assets import resolve
from synfer.core.dataset import DatasetError, DatasetWriter, Record
from synfer.core.options import call
from synfer.models.classifiers import ClassifierConfig, ExpressionClassifier
from synfer.schema import AUSet, OrderMismatchError

NAMES = ("AU01", "AU12_L", "AU12_R")
TINY = dict(architecture="fer_resnet_xs", model_kwargs={"widths": [8, 16, 16, 16], "depths": [1, 1, 1, 1]},
            epochs=10, batch_size=16, lr=1e-2, weight_decay=0.0, seed=0)


def teacher_face(rng: np.random.Generator, size: int = 16) -> tuple[Image.Image, list[float]]:
    """A face whose 'AUs' are visible: AU01 = brightness of the top half, AU12_L / AU12_R = of the lower
    subject-left (image right) / subject-right (image left) quarter."""
    v = rng.uniform(0, 1, 3)
    a = np.full((size, size), 40.0) + rng.normal(0, 3, (size, size))
    h = size // 2
    a[:h] += 180 * v[0]
    a[h:, h:] += 180 * v[1]
    a[h:, :h] += 180 * v[2]
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), mode="L"), [float(x) for x in v]


def write_teacher_folder(path: Path, names: tuple[str, ...] = NAMES, n_train: int = 192) -> Path:
    rng = np.random.default_rng(0)
    with DatasetWriter(path, ("neutral", "happiness"), aus=AUSet(names)) as w:
        for split, n in (("train", n_train), ("val", 64), ("test", 16)):
            for i in range(n):
                im, aus = teacher_face(rng)
                no_face = i % 8 == 7  # some records where the teacher saw no face: aus None, presence low
                w.add(Record(id=f"{split}-{i:04d}", split=split, source="test", expression="neutral",
                             aus=None if no_face else aus, meta={"face_presence": 0.1 if no_face else 0.95}), im)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distil")
    data = write_teacher_folder(root / "data")
    return call(train_au_estimator, data, root / "run", **TINY)


def test_student_learns_the_teacher(run: Path) -> None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == TINY["epochs"]
    config = json.loads((run / "config.json").read_text())
    assert config["label_names"] == [*NAMES, "face_presence"]
    assert config["extra"]["kind"] == "au-estimator"
    best = max(r["val_mean_r"] for r in rows)
    assert config["extra"]["val_mean_r"] == pytest.approx(best)
    assert best > 0.8, rows  # the AUs are plain brightness patterns: a student that learns gets them


def test_estimator_interface_and_gradients(run: Path) -> None:
    est = create_estimator("distilled", run)
    assert isinstance(est, DistilledAUEstimator)
    assert est.au_set.names == NAMES
    rng = np.random.default_rng(1)
    faces, targets = zip(*(teacher_face(rng) for _ in range(40)), strict=True)
    # any size and mode: a colour 32 px image goes through the same network
    res = est.estimate(list(faces) + [faces[0].convert("RGB").resize((32, 32))])
    assert res.aus.shape == (41, 3) and res.face_presence.shape == (41,)
    assert res.aus.dtype == np.float32 and 0 <= res.aus.min() and res.aus.max() <= 1
    r = pearson_per_column(res.aus[:40], np.array(targets))
    assert np.all(r > 0.7), r
    arr = est.estimate(np.stack([np.asarray(f) for f in faces[:4]]))  # a uint8 batch works too
    np.testing.assert_allclose(arr.aus, res.aus[:4], atol=1e-5)
    assert set(est.timings) == {"preprocess", "network"}
    # differentiable, as AU guidance uses it: a few signed-gradient steps on the pixels raise AU12_L
    x0 = torch.from_numpy(np.asarray(faces[0], dtype=np.float32) / 255).view(1, 1, 16, 16)
    x = x0.clone().requires_grad_(True)
    for _ in range(5):
        aus, face = est(x)
        assert aus.shape == (1, 3) and face.shape == (1,)
        (grad,) = torch.autograd.grad(aus[0, 1], x)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        x = (x + 0.03 * grad.sign()).clamp(0, 1).detach().requires_grad_(True)
    with torch.no_grad():
        assert est(x)[0][0, 1] > est(x0)[0][0, 1] + 0.05


def test_order_and_kind_are_checked_on_load(run: Path, tmp_path: Path) -> None:
    with pytest.raises(OrderMismatchError):
        DistilledAUEstimator.from_pretrained(run, au_set=AUSet(("AU12_L", "AU01", "AU12_R")))
    DistilledAUEstimator.from_pretrained(run, au_set=AUSet(NAMES))
    plain = ExpressionClassifier(ClassifierConfig("fer_resnet_xs", ["neutral", "happiness"], (1, 16, 16)))
    plain.save_pretrained(tmp_path / "clf")
    with pytest.raises(ValueError, match="not an AU estimator"):
        DistilledAUEstimator.from_pretrained(tmp_path / "clf")
    with pytest.raises(FileNotFoundError, match="train-au-estimator"):
        resolve("au-estimator", tmp_path / "nowhere")


def test_flip_swaps_lateral_columns() -> None:
    names = ("AU01", "AU12_L", "AU12_R", "AU14_R", "AU14_L")
    assert _flip_permutation(names) == [0, 2, 1, 4, 3]
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1) / 16
    aus = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]]).repeat(64, 1)
    torch.manual_seed(0)
    xa, aa = _augment(x, aus, _flip_permutation(names))
    flipped = aa[:, 1] == 0.3
    assert 0 < flipped.sum() < 64
    assert torch.equal(aa[flipped], torch.tensor([[0.1, 0.3, 0.2, 0.5, 0.4]]).repeat(int(flipped.sum()), 1))
    # the flipped faces are mirror images (up to the brightness / contrast jitter, which keeps the ordering)
    assert torch.all(xa[flipped][:, 0, 0, 0] >= xa[flipped][:, 0, 0, 3])
    assert torch.all(xa[~flipped][:, 0, 0, 0] <= xa[~flipped][:, 0, 0, 3])


def test_agreement_ignores_constant_columns() -> None:
    rng = np.random.default_rng(0)
    t = np.stack([rng.uniform(0, 1, 200), np.full(200, 0.001), rng.uniform(0, 1, 200)], 1)
    p = t + rng.normal(0, 0.05, t.shape)
    a = au_agreement(p, t, ("AU01", "AU09", "AU12"))
    assert a["varying"] == ["AU01", "AU12"]
    assert a["mean_r"] > 0.95
    assert a["per_au"]["AU09"]["teacher_std"] == 0.0


def test_resume_with_other_options_is_refused(tmp_path: Path) -> None:
    data = write_teacher_folder(tmp_path / "data", n_train=48)
    kw = {**TINY, "epochs": 1}
    call(train_au_estimator, data, tmp_path / "run", **kw)
    with pytest.raises(DatasetError, match="already exists"):
        call(train_au_estimator, data, tmp_path / "run", **kw)
    with pytest.raises(DatasetError, match="lr"):
        call(train_au_estimator, data, tmp_path / "run", **{**kw, "epochs": 2, "lr": 0.5}, resume=True)


def test_folder_without_aus_is_refused(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path / "plain", ("neutral",)) as w:
        w.add(Record(id="a", split="train", source="t", expression="neutral"), teacher_face(np.random.default_rng())[0])
    with pytest.raises(DatasetError, match="synfer prepare"):
        call(train_au_estimator, tmp_path / "plain", tmp_path / "run", **TINY)


# -- the bundled estimator on real faces ---------------------------------------------------------------------------
MODEL = SHARED_DATA / "mediapipe_face_landmarker" / "face_landmarker.task"


@pytest.mark.skipif(not (FERPLUS_DIR / "FER2013Valid").is_dir() or not MODEL.is_file()
                    or importlib.util.find_spec("ai_edge_litert") is None,
                    reason="needs the real FER+ folder, the MediaPipe model and ai-edge-litert")
def test_bundled_estimator_tracks_mediapipe_on_real_val_faces() -> None:
    """On 300 FER+ validation faces (never the test split) the bundled student correlates with MediaPipe."""
    est = create_estimator("distilled")
    teacher = create_estimator("mediapipe", MODEL)
    files = sorted((FERPLUS_DIR / "FER2013Valid").glob("*.png"))[:300]
    faces = [Image.open(f).convert("L") for f in files]
    t, s = teacher.estimate(faces), est.estimate(faces)
    keep = t.face_presence >= 0.5
    agree = au_agreement(s.aus[keep], t.aus[keep], est.au_set.names)
    assert agree["mean_r"] > 0.6, agree
    assert pearson_per_column(s.face_presence[:, None], t.face_presence[:, None])[0] > 0.5


def test_prepare_with_the_bundled_distilled_estimator(tmp_path: Path) -> None:
    """`synfer prepare --estimator distilled` needs no MediaPipe and records which weights wrote the AUs."""
    from conftest import gray_face
    from synfer.annotate.prepare import prepare
    from synfer.core.dataset import DatasetFolder

    with DatasetWriter(tmp_path / "src", ("neutral", "happiness")) as w:
        for i in range(6):
            w.add(Record(id=f"f{i}", split="train", source="t", expression="neutral"), gray_face(i))
    out = prepare(tmp_path / "src", tmp_path / "out", estimator="distilled", min_face_presence=0.0)
    d = DatasetFolder(out)
    assert d.au_names == DistilledAUEstimator.from_pretrained().au_set.names
    recs = list(d.records())
    assert len(recs) == 6 and all(r.aus is not None and len(r.aus) == 22 for r in recs)
    est = next(e for e in d.header.provenance if e["stage"] == "prepare")["config"]["estimator"]
    assert est["estimator"] == "distilled" and est["model"] == "ferplus-au-distilled"
    assert len(est["model_sha256"]) == 64
