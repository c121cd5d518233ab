import json

import numpy as np
import pytest
import torch

from conftest import PATTERN_CLASSES, stopped_after_saves, write_pattern_dataset
from synfer.classifiers.evaluate import evaluate
from synfer.classifiers.probe import _few_shot_indices, probe
from synfer.classifiers.train import train_fer
from synfer.core.options import call
from synfer.core.splits import MixSampler, load_split
from synfer.models.classifiers import ClassifierConfig, ExpressionClassifier
from synfer.schema import OrderMismatchError

TINY = {"architecture": "fer_resnet_xs", "model_kwargs": {"widths": [8, 16, 16, 32], "depths": [1, 1, 1, 1]},
        "batch_size": 16, "lr": 0.05, "warmup_epochs": 0.5, "aug_group": 1}


@pytest.fixture(scope="module")
def pattern_data(tmp_path_factory):
    return write_pattern_dataset(tmp_path_factory.mktemp("data") / "patterns")


@pytest.fixture(scope="module")
def trained(pattern_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    call(train_fer, [pattern_data], out, epochs=6, augment="none", **TINY)
    return out


def test_tiny_backbone_learns_easy_task(trained, pattern_data, tmp_path):
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and rows[-1]["train_loss"] < rows[0]["train_loss"]
    text = evaluate(str(trained), pattern_data, split="test", out=tmp_path / "eval")
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["accuracy"] >= 0.9, text
    assert set(m["per_class"]) == set(PATTERN_CLASSES) and np.asarray(m["confusion_matrix"]).sum() == 36
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 1000
    assert len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()) == 36
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["label_names"] == list(PATTERN_CLASSES) and cfg["extra"]["selected_on"].endswith("val accuracy")
    tta = evaluate(str(trained), pattern_data, split="test", tta=True)
    assert "TTA" in tta
    assert m["precision"] == "fp32"  # exact by default
    evaluate(str(trained), pattern_data, split="test", out=tmp_path / "bf16", precision="bf16")
    low = json.loads((tmp_path / "bf16" / "metrics.json").read_text())
    assert low["precision"] == "bf16" and abs(low["accuracy"] - m["accuracy"]) <= 1 / 36


def test_label_order_mismatch_refused(trained, tmp_path):
    other = write_pattern_dataset(tmp_path / "other", {"test": 2},
                                  expressions=("happiness", "neutral", "surprise"))
    with pytest.raises(OrderMismatchError, match="different order"):
        evaluate(str(trained), other, split="test")


def test_resume_replays_the_same_run(pattern_data, tmp_path, monkeypatch):
    """Train 3 epochs straight vs 2 epochs + resume to 3: identical weights (state, RNG and sampler restored)."""
    kw = dict(TINY, augment="standard", ema_decay=0.9, seed=3)
    call(train_fer, [pattern_data], tmp_path / "straight", epochs=3, **kw)
    # simulate an interruption after epoch 2: a 3-epoch run whose third epoch never ran
    with stopped_after_saves(monkeypatch, 2):
        call(train_fer, [pattern_data], tmp_path / "resumed", epochs=3, **kw)
    call(train_fer, [pattern_data], tmp_path / "resumed", epochs=3, resume=True, **kw)
    a = ExpressionClassifier.from_pretrained(tmp_path / "straight").state_dict()
    b = ExpressionClassifier.from_pretrained(tmp_path / "resumed").state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]  # no duplicate epochs


def test_existing_run_folder_needs_a_choice(trained, pattern_data):
    with pytest.raises(ValueError, match="--resume"):
        call(train_fer, [pattern_data], trained, epochs=1, **TINY)
    with pytest.raises(ValueError, match="other options.*'lr': \\(0.05, 0.01\\)"):  # a resume continues the same run only
        call(train_fer, [pattern_data], trained, epochs=6, resume=True, **{**TINY, "lr": 0.01}, augment="none")


def test_mix_ratios_and_counts_respected():
    labels = [torch.tensor([0] * 90 + [1] * 10), torch.tensor([0, 1] * 50)]
    s = MixSampler([100, 100], labels, ratios=[3, 1], epoch_size=400, seed=0)
    idx = s.plan(0)
    assert len(idx) == 400 and (idx < 100).sum() == 300 and (idx >= 100).sum() == 100
    s = MixSampler([100, 100], labels, counts=[0, 150], seed=0)
    idx = s.plan(1)
    assert len(idx) == 150 and (idx >= 100).all() and len(set(idx.tolist())) == 100  # all once, then repeats
    assert np.array_equal(s.plan(1), idx) and not np.array_equal(s.plan(2), idx)  # seeded per epoch
    b = MixSampler([100], labels[:1], counts=[2000], balanced=True, seed=0).plan(0)
    share = (labels[0][b] == 1).float().mean().item()
    assert 0.45 < share < 0.55  # balanced despite a 90/10 split
    b = MixSampler([100], labels[:1], counts=[4000], balanced=True, balance_power=0.5, seed=0).plan(0)
    share = (labels[0][b] == 1).float().mean().item()
    assert 0.22 < share < 0.28  # square-root balancing: sqrt(10) / (sqrt(90) + sqrt(10)) = 0.25
    with pytest.raises(ValueError, match="one per folder"):
        MixSampler([100, 100], labels, ratios=[1.0])


def test_mixed_training_uses_both_folders(pattern_data, tmp_path):
    second = write_pattern_dataset(tmp_path / "synthetic", {"train": 10}, seed=1)
    out = call(train_fer, [pattern_data, second], tmp_path / "mix", epochs=1, counts=[32, 32], val=pattern_data,
                    **TINY)
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["config"]["counts"] == [32, 32] and len(cfg["data"]) == 3


def test_probe_and_few_shot(trained, pattern_data, tmp_path):
    text = probe(str(trained), pattern_data, out=tmp_path / "p", shots=[2], seeds=[0, 1])
    r = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert r["linear_probe"]["accuracy"] >= 0.9 and "2-shot" in text
    assert len(r["few_shot"]["2"]["runs"]) == 2
    labels = load_split(pattern_data, "train").labels.numpy()
    idx = _few_shot_indices(labels, 3, 5, seed=0)
    assert np.bincount(labels[idx]).tolist() == [5, 5, 5]


def test_one_channel_batches_get_plain_nchw_strides_and_train_with_threads() -> None:
    """A 1-channel permute().contiguous() keeps channels-last strides; with them torch 2.14's oneDNN convolution
    backward corrupted the heap on the CPU (the reduced experiment test crashed). stack_nchw gives NCHW strides."""
    from synfer.core.batching import stack_nchw

    arrays = [np.full((16, 16, 1), i, np.uint8) for i in range(5)]
    x = stack_nchw(arrays)
    assert x.shape == (5, 1, 16, 16) and x.stride() == (256, 256, 16, 1)
    assert torch.equal(x[:, 0], torch.from_numpy(np.stack(arrays))[..., 0])
    assert stack_nchw([np.zeros((4, 4, 3), np.uint8)]).stride() == (48, 16, 4, 1)
    torch.manual_seed(0)
    model = ExpressionClassifier(ClassifierConfig("fer_resnet_xs", ["a", "b", "c"], (1, 16, 16),
                                                  model_kwargs={"widths": (8, 16, 16, 16), "depths": (1, 1, 1, 1)}))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in range(20):  # the crash came within a few steps with channels-last input
            model(stack_nchw([np.random.randint(0, 255, (16, 16, 1), np.uint8) for _ in range(5)])).sum().backward()
    finally:
        torch.set_num_threads(threads)


def test_report_to_tensorboard_logs_every_epoch(pattern_data, tmp_path):
    """--report-to tensorboard: accelerate's tracker writes each epoch's metrics under OUT/logs, the same values and
    steps as metrics.jsonl; an unknown tracker is refused before the run folder exists."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    call(train_fer, [pattern_data], tmp_path / "run", epochs=2, augment="none", report_to="tensorboard", **TINY)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (events,) = {p.parent for p in (tmp_path / "run" / "logs").rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events))
    acc.Reload()
    for key in ("train_loss", "val_accuracy"):
        logged = [(e.step, e.value) for e in acc.Scalars(key)]
        assert logged == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows]
    with pytest.raises(ValueError, match="report_to must be one of"):
        call(train_fer, [pattern_data], tmp_path / "bad", epochs=1, report_to="mlflowx", **TINY)
    assert not (tmp_path / "bad").exists()
