"""synfer quality: FD-FER / KID-FER / diversity behave as their definitions say; the judge may not be an annotator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PATTERN_CLASSES, write_pattern_dataset
from synfer.classifiers.evaluate import predict
from synfer.core.splits import load_split
from synfer.labeling.label import label
from synfer.models.classifiers import ClassifierConfig, ExpressionClassifier
from synfer.study.quality import diversity, frechet_distance, kernel_distance, quality


def test_frechet_distance_matches_gaussians() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 4))
    assert abs(frechet_distance(a, a)) < 1e-6
    shifted = rng.normal(size=(20000, 4)) + np.array([1.0, 0, 0, 0])
    assert frechet_distance(a, shifted) == pytest.approx(1.0, abs=0.06)  # |mu|^2
    wide = 2 * rng.normal(size=(20000, 4))
    assert frechet_distance(a, wide) == pytest.approx(4.0, abs=0.2)  # 4 * (1 + 4 - 2 * 2)


def test_kernel_distance_and_diversity() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    same, same_std = kernel_distance(a, b, subsets=20, subset_size=200)
    moved, _ = kernel_distance(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3 and moved > 10 * max(abs(same), same_std)
    labels = np.array([0] * 300 + [1] * 300)
    clones = np.repeat(rng.normal(size=(1, 8)), 600, axis=0)
    assert diversity(clones, labels, ["x", "y"])["mean"] == pytest.approx(0.0, abs=1e-9)
    assert diversity(a, labels, ["x", "y"])["mean"] == pytest.approx(1.0, abs=0.1)  # random directions


def tiny_judge(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    ExpressionClassifier(ClassifierConfig("fer_resnet_xs", list(PATTERN_CLASSES), (1, 16, 16), model_kwargs={
        "widths": (4, 8, 8, 8), "depths": (1, 1, 1, 1)})).save_pretrained(path)
    return path


def test_quality_reports_and_refuses_an_annotator_as_judge(tmp_path: Path) -> None:
    syn = write_pattern_dataset(tmp_path / "syn", {"train": 10}, seed=1)
    real = write_pattern_dataset(tmp_path / "real", {"test": 10}, seed=2)
    judge = tiny_judge(tmp_path / "judge", 0)
    r = quality(syn, real, str(judge), kid_subsets=5, kid_subset_size=20, out=tmp_path / "q.json")
    assert r["faces"] == 30 and r["real_faces"] == 30 and (tmp_path / "q.json").is_file()
    model = ExpressionClassifier.from_pretrained(judge)
    faces = load_split(syn, "train", expressions=model.label_names)
    judged = predict(model, faces, torch.device("cpu")).argmax(1)
    truth = faces.labels.numpy()
    assert r["expression_accuracy"] == pytest.approx(100 * np.mean(judged == truth), abs=0.01)
    assert r["fd_fer"] > 0  # two different pattern sets
    assert set(r["diversity"]["synthetic"]) == {*PATTERN_CLASSES, "mean"}
    # judged against itself, a real set scores exactly the judge's reference on the real faces
    same = quality(real, real, str(judge), kid_subsets=5, kid_subset_size=20)
    ref = same["real_reference"]
    assert same["expression_accuracy"] == ref["expression_accuracy"] and same["expression_recall"] == \
        ref["expression_recall"] and ref["mean_recall"] == pytest.approx(np.mean(list(ref["expression_recall"].values())),
                                                                          abs=0.01)
    labelled = label(syn, tmp_path / "labelled", [str(judge), str(tiny_judge(tmp_path / "other", 1))])
    with pytest.raises(ValueError, match="was not an annotator"):
        quality(labelled, real, str(judge))
    quality(labelled, real, str(tiny_judge(tmp_path / "third", 2)), kid_subsets=2, kid_subset_size=10)


def copy_records(src: Path, dest: Path, picks: list[tuple[str, list[str] | None, str]]) -> None:
    """A dataset folder holding the images of some of ``src``'s records (same labels): per (split, ids or None for
    all, new split), e.g. copies of training faces posing as generated ones."""
    from synfer.core.dataset import DatasetFolder, DatasetWriter, Record

    folder = DatasetFolder(src)
    with DatasetWriter(dest, folder.expressions) as w:
        for split, ids, as_split in picks:
            for r in folder.records(split):
                if ids is None or r.id in ids:
                    w.add(Record(id=f"copy-{r.id}", split=as_split, source="test", expression=r.expression),
                          folder.load_image(r.image))


def test_privacy_audit_flags_copies_of_training_faces(tmp_path: Path) -> None:
    from synfer.core.nearest import exact_copies, nearest

    real = write_pattern_dataset(tmp_path / "real", {"train": 30, "test": 20}, seed=3)
    judge = tiny_judge(tmp_path / "judge", 0)
    fresh = write_pattern_dataset(tmp_path / "fresh", {"train": 10}, seed=4)  # new draws: no copies
    copies = tmp_path / "copies"
    copy_records(real, copies, [("train", [f"train-{n}-{i:03d}" for n in PATTERN_CLASSES for i in range(3)], "train")])
    r = quality([fresh, copies], real, str(judge), train=real, kid_subsets=3, kid_subset_size=10,
                gallery=tmp_path / "closest.png")
    p = r["privacy"]
    assert r["faces"] == 39 and p["training_faces"] == 90 and p["real_test_faces"] == 60
    # the 9 exact copies sit at distance 0, below every real test face: all flagged; of the 30 fresh draws (as
    # far from the training faces as real test faces are) about 1% may fall below the threshold too
    assert 9 <= p["pixels"]["near_copies"] <= 11 and p["pixels"]["synthetic_distance"]["min"] == 0
    assert p["judge_features"]["near_copies"] >= 9
    assert all(c["near_copies"] >= 3 for c in p["pixels"]["per_class"].values())
    assert (tmp_path / "closest.png").is_file()
    # label drops faces nearer to a training face than the audit's pixel threshold, and counts them
    judges = [str(judge), str(tiny_judge(tmp_path / "other", 1))]
    kept = label(copies, tmp_path / "l1", judges, near_copies_of=real,
                 near_copy_distance=p["pixels"]["threshold"])
    from synfer.core.dataset import DatasetFolder, read_header

    assert len(DatasetFolder(kept).select_split("train")) == 0
    assert read_header(kept).stats["label"]["near_copies"] == 9
    with pytest.raises(ValueError, match="together"):
        label(copies, tmp_path / "l2", judges, near_copies_of=real)
    assert not (tmp_path / "l2").exists()
    # the nearest-neighbour search agrees with brute force; exact copies are found by bytes
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(50, 7)), rng.normal(size=(80, 7))
    d, i = nearest(q, k, chunk=16)
    brute = np.linalg.norm(q[:, None] - k[None], axis=-1)
    assert np.array_equal(i, brute.argmin(1)) and np.allclose(d, brute.min(1), atol=1e-4)
    a = torch.randint(0, 255, (5, 1, 4, 4), dtype=torch.uint8)
    assert exact_copies(torch.cat([a[:2], a[:2] + 1]), a).tolist() == [True, True, False, False]
    # a test split holding exact training copies: they leave the reference instead of pulling the threshold to 0
    leaky = tmp_path / "leaky"
    copy_records(real, leaky, [("train", [f"train-{PATTERN_CLASSES[0]}-{i:03d}" for i in range(5)], "test"),
                               ("test", None, "test")])
    r2 = quality(fresh, leaky, str(judge), train=real, kid_subsets=3, kid_subset_size=5)
    assert r2["privacy"]["test_faces_dropped_as_exact_training_copies"] == 5
