"""``synfer prepare``: AUs, captions and face presence added to a dataset folder; resume; failure before output;
and, with the real data and model, per-class AU means that make FACS sense."""

import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

import synfer.annotate.prepare as prepare_mod
from conftest import FERPLUS_DIR, SHARED_DATA, needs_ferplus, tree_state, write_ferplus_fixture
from synfer.annotate.au import ESTIMATORS, AUResult
from synfer.annotate.prepare import au_table, prepare
from synfer.cli import main
from synfer.core.dataset import DatasetError, DatasetFolder, DatasetWriter, Record
from synfer.core.report import au_means, validate_dataset
from synfer.importers.ferplus import import_ferplus
from synfer.schema import FERPLUS8, AUSet

MODEL = SHARED_DATA / "mediapipe_face_landmarker" / "face_landmarker.task"
needs_model = pytest.mark.skipif(
    not MODEL.is_file() or importlib.util.find_spec("ai_edge_litert") is None or importlib.util.find_spec("mediapipe")
    is None, reason=f"MediaPipe model not found at {MODEL}, or ai-edge-litert / mediapipe not installed")

ROWS = {
    "FER2013Train": [[10, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 9, 0, 0, 0, 0, 0, 0, 1, 0],
                     [0, 0, 10, 0, 0, 0, 0, 0, 0, 0], [0, 6, 4, 0, 0, 0, 0, 0, 0, 0],
                     [0, 0, 0, 10, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 10, 0, 0, 0, 0, 0],
                     [0, 0, 0, 0, 0, 0, 10, 0, 0, 0]],
    "FER2013Valid": [[0, 0, 0, 0, 0, 10, 0, 0, 0, 0], [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]],
    "FER2013Test": [[0, 0, 0, 0, 0, 0, 0, 10, 0, 0], [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]],
}
N = 11
FAKE_AUS = AUSet(("AU01", "AU12"))


class FakeEstimator:
    """Deterministic stand-in: AUs from the image mean, no face in a flat image, every face turned left."""

    au_set = FAKE_AUS
    fail_on_call: int | None = None  # raise KeyboardInterrupt on this call (simulates a kill)

    def __init__(self):
        self.timings = {}
        self.calls = 0

    def estimate(self, images):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        arrays = [np.asarray(im, dtype=np.float32) for im in images]
        presence = np.array([0.0 if a.std() == 0 else 0.9 for a in arrays], np.float32)
        aus = np.array([[a.mean() / 255, 1 - a.mean() / 255] for a in arrays], np.float32)
        aus[presence == 0] = 0
        self.timings["landmarks"] = self.timings.get("landmarks", 0.0) + 0.001
        pose = np.tile(np.array([[12.0, 0.0, 0.0]], np.float32), (len(arrays), 1))
        return AUResult(aus, presence, head_pose=pose)


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(ESTIMATORS, "fake", lambda model_path, **kw: FakeEstimator())
    monkeypatch.setattr(FakeEstimator, "fail_on_call", None)
    return FakeEstimator


@pytest.fixture
def src(tmp_path):
    raw = write_ferplus_fixture(tmp_path / "raw", ROWS)
    Image.new("L", (48, 48), 128).save(raw / "FER2013Train" / "fer0000000.png")  # a face-less image
    return import_ferplus(raw, tmp_path / "src", label_mode="probability")  # soft labels


def test_prepare_adds_aus_captions_and_presence(src, tmp_path, fake):
    before = tree_state(src)
    out = prepare(src, tmp_path / "out", estimator="fake", batch_size=4)
    assert tree_state(src) == before
    d, s = DatasetFolder(out), DatasetFolder(src)
    assert d.header.aus == FAKE_AUS and d.ids == s.ids and len(d) == N
    assert d.column("expression") == s.column("expression") and d.column("label_probs") == s.column("label_probs")
    recs = {r.id: r for r in d.records()}
    flat = recs["fer0000000"]
    assert flat.aus is None and flat.meta["face_presence"] == 0 and "head_pose" not in flat.meta
    assert flat.meta["votes"] == [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # the source's meta is kept
    for rid, r in recs.items():
        assert r.caption and r.caption.endswith(".")
        if rid != "fer0000000":
            assert len(r.aus) == 2 and r.meta["face_presence"] == pytest.approx(0.9)
            assert r.meta["head_pose"]["yaw"] == 12.0 and "turned slightly to the left" in r.caption
    assert "mostly" in recs["fer0000003"].caption  # 6 happiness / 4 surprise votes -> soft label words
    assert os.path.samefile(d.image_path(flat.image), s.image_path(flat.image))  # hard-linked, not copied
    stats = d.header.stats["prepare"]
    assert stats["no_face"] == 1 and stats["records_with_aus"] == N - 1 and stats["runs"] == 1
    assert {"decode", "captions", "write", "landmarks", "wall"} <= set(stats["timing_s"])
    assert d.header.stats["label_mode"] == "probability"  # carried from the source
    assert [p["stage"] for p in d.header.provenance] == ["import-ferplus", "prepare"]
    assert validate_dataset(out) == []
    table = au_table(out)
    assert "AU01" in table and "happiness" in table
    assert set(au_means(out)) == {e for e, n in zip(d.column("expression"), d.column("aus"), strict=True) if n}


def test_prepare_resumes_after_an_interrupt(src, tmp_path, fake, monkeypatch):
    monkeypatch.setattr(prepare_mod, "FLUSH_EVERY", 2)
    fake.fail_on_call = 3
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare(src, out, estimator="fake", batch_size=2)
    partial = DatasetFolder(out, allow_incomplete=True)
    assert not partial.header.complete and len(partial) == 4
    with pytest.raises(DatasetError, match="--resume"):
        prepare(src, out, estimator="fake", batch_size=2)
    fake.fail_on_call = None
    prepare(src, out, estimator="fake", batch_size=3, resume=True)
    d = DatasetFolder(out)
    assert len(d) == N and len(set(d.ids)) == N and sorted(d.ids) == sorted(DatasetFolder(src).ids)
    assert d.header.stats["prepare"]["runs"] == 2 and d.header.stats["prepare"]["no_face"] == 1
    fresh = DatasetFolder(prepare(src, tmp_path / "fresh", estimator="fake", batch_size=5))
    by_id = {r.id: (r.caption, r.aus) for r in fresh.records()}
    assert all(by_id[r.id] == (r.caption, r.aus) for r in d.records())  # seeded per record, not per batch
    with pytest.raises(DatasetError, match="other options"):
        prepare(src, out, estimator="fake", seed=1, resume=True)


def test_missing_model_fails_before_writing(src, tmp_path):
    with pytest.raises(FileNotFoundError, match="--au-model"):
        prepare(src, tmp_path / "out", au_model=tmp_path / "face_landmarker.task")
    with pytest.raises(FileNotFoundError, match="face_landmarker.task"):
        prepare(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_splits_and_limit(src, tmp_path, fake):
    d = DatasetFolder(prepare(src, tmp_path / "val", estimator="fake", splits=["val"]))
    assert set(d.column("split")) == {"val"} and len(d) == 2
    assert len(DatasetFolder(prepare(src, tmp_path / "lim", estimator="fake", limit=3))) == 3
    with pytest.raises(ValueError, match="nope"):
        prepare(src, tmp_path / "bad", estimator="fake", splits=["nope"])


def test_prepare_through_the_cli(src, tmp_path, fake):
    out = tmp_path / "cli"
    assert main(["prepare", str(src), str(out), "--estimator", "fake", "--splits", "train,test",
                 "--limit", "5", "--batch-size", "2"]) == 0
    assert len(DatasetFolder(out)) == 5
    assert main(["prepare", str(src), str(tmp_path / "x"), "--au-model", str(tmp_path / "none.task")]) == 2


@pytest.mark.data
@needs_model
def test_prepare_with_mediapipe_on_noise(src, tmp_path):
    out = prepare(src, tmp_path / "mp", au_model=MODEL, batch_size=4, num_threads=1)
    d = DatasetFolder(out)
    assert len(d) == N and all(c for c in d.column("caption"))
    assert d.header.aus.names[:3] == ("AU01", "AU02", "AU04")
    recs = {r.id: r for r in d.records()}
    assert recs["fer0000000"].meta["face_presence"] < 0.5 and recs["fer0000000"].aus is None
    assert {"preprocess", "landmarks", "blendshapes"} <= set(d.header.stats["prepare"]["timing_s"])


def _real_source(path, per_class):
    """A dataset folder of the first majority-labelled FER+ train faces of each class (images hard-linked)."""
    from synfer.importers.ferplus import ferplus_target, parse_label_csv

    rows, _ = parse_label_csv(FERPLUS_DIR / "FER2013Train" / "label.csv")
    taken = dict.fromkeys(per_class, 0)
    with DatasetWriter(path, FERPLUS8.names) as w:
        for row in rows:
            probs = ferplus_target(row.votes, "majority")
            if probs is None:
                continue
            e = FERPLUS8.names[int(np.argmax(probs))]
            if taken.get(e, per_class.get(e, 0)) >= per_class.get(e, 0):
                continue
            taken[e] += 1
            w.add(Record(id=row.name[:-4], split="train", source="ferplus", expression=e, label_probs=probs),
                  FERPLUS_DIR / "FER2013Train" / row.name, link=True)
    return path


@pytest.mark.data
@needs_ferplus
@needs_model
def test_au_means_make_facs_sense_on_real_faces(tmp_path):
    per_class = {"neutral": 120, "happiness": 150, "surprise": 150, "sadness": 90, "anger": 90}
    src = _real_source(tmp_path / "real", per_class)
    out = prepare(src, tmp_path / "prepared", au_model=MODEL, num_threads=1)
    means = au_means(out)
    others = [e for e in means if e != "happiness"]
    for au in ("AU06", "AU12"):  # Duchenne smile: 6 + 12
        assert all(means["happiness"][au] > means[e][au] for e in others), (au, means)
    assert max(means["happiness"], key=means["happiness"].get) == "AU12"
    for au in ("AU01", "AU02", "AU26"):  # surprise: 1 + 2 + 5 + 26
        assert means["surprise"][au] > means["neutral"][au] + 0.1, (au, means)
    assert means["surprise"]["AU05"] > means["neutral"]["AU05"]
    assert means["anger"]["AU04"] > means["surprise"]["AU04"]  # brows lowered in anger, raised in surprise
