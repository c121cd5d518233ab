"""synfer quality: FD-FER / KID-FER / diversity behave as their definitions say; the judge may not be an annotator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PATTERN_CLASSES, write_pattern_dataset
from synfer.fer.quality import diversity, frechet_distance, kernel_distance, quality
from synfer.labeling.label import label
from synfer.models.classifiers import ClassifierConfig, ExpressionClassifier


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
    assert 0 <= r["expression_accuracy"] <= 100 and r["fd_fer"] >= 0
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
