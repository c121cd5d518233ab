"""FERAnno and `synfer label` on tiny SD-shaped components: the hooks read the intended layers, save/load round
trips are identical, a head trained on easy patterns learns them, and voting follows its truth table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from conftest import (
    PATTERN_CLASSES,
    stopped_after_saves,
    tiny_clip_encoder,
    tiny_vae_unet,
    write_pattern_dataset,
)
from synfer.core.dataset import DatasetFolder
from synfer.core.options import call
from synfer.generator.pipeline import SynferPipeline
from synfer.labeling.annotators import FERAnnotator, load_annotator
from synfer.labeling.label import label
from synfer.labeling.train_annotator import train_annotator
from synfer.labeling.vote import summarise, vote
from synfer.models.classifiers import ClassifierConfig, ExpressionClassifier
from synfer.models.feranno import FERAnnoConfig, FERAnnoHead, UNetFeatureHooks


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gen")
    vae, unet = tiny_vae_unet()
    pipe = SynferPipeline(vae=vae, unet=unet, text_encoder=tiny_clip_encoder(root / "tok"), scheduler=DDIMScheduler())
    pipe.save_pretrained(root / "pipe")
    return root / "pipe"


@pytest.fixture(scope="module")
def patterns(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pattern_dataset(tmp_path_factory.mktemp("data") / "ds", {"train": 24, "val": 8, "test": 8})


def test_hooks_capture_up_blocks_and_cross_attention(pipe_dir: Path) -> None:
    pipe = SynferPipeline.from_pretrained(pipe_dir)
    unet = pipe.unet
    reader = FERAnnotator(pipe, attention_tokens=5)
    feats, attn = reader.read(torch.rand(2, 1, 16, 16))
    # one map per up block, with that block's output channels, coarse to fine
    assert [f.shape[1] for f in feats] == list(reversed(unet.config.block_out_channels))
    assert [f.shape[-1] for f in feats] == [8, 8]  # 4x4 upsampled in the first up block, 8x8 in the last
    cross = [n for n, m in unet.named_modules() if n.endswith("attn2")]
    assert len(attn) == len(cross) == 4  # down block, middle, and the up block's two, in call order
    assert [a.shape for a in attn] == [(2, 5, 8, 8), (2, 5, 4, 4), (2, 5, 8, 8), (2, 5, 8, 8)]
    # probabilities over the first 5 tokens renormalised by the softmax over them: each position sums to 1
    assert torch.allclose(attn[0].sum(1), torch.ones(2, 8, 8), atol=1e-5)
    with UNetFeatureHooks(unet) as hooks:
        pass
    unet(torch.zeros(1, 4, 8, 8), 1, encoder_hidden_states=torch.zeros(1, 3, 32))
    assert hooks.features == [] and hooks.attention == []  # removed on exit


@pytest.mark.parametrize("kind", ["feranno", "probe"])
def test_head_save_load_is_identical(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    head = FERAnnoHead(FERAnnoConfig(list(PATTERN_CLASSES), [32, 16], 2, kind=kind, attention_tokens=5, grid=4,
                                     dim=16, heads=2)).eval()
    feats = [torch.randn(3, 32, 4, 4), torch.randn(3, 16, 8, 8)]
    attn = [torch.rand(3, 5, 8, 8), torch.rand(3, 5, 4, 4)]
    again = FERAnnoHead.from_pretrained(head.save_pretrained(tmp_path / "h"))
    assert torch.equal(head(feats, attn), again(feats, attn))
    assert json.loads((tmp_path / "h" / "config.json").read_text())["format"] == "synfer-feranno"
    with pytest.raises(ValueError, match="feature maps"):
        head(feats[:1], attn)


def test_vote_truth_table() -> None:
    p = lambda *rows: np.array(rows, dtype=float)  # noqa: E731  (one face per row)
    a = p([0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1])
    b = p([0.8, 0.2, 0.0], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.1, 0.7], [0.3, 0.6, 0.1])
    targets = np.array([0, 0, 1, -1, 2])
    r = vote(np.stack([a, b]), targets)
    # 0: both pick the target -> agree; 1: both pick 1, target 0 -> relabel to 1; 2: split -> relabel to mean argmax;
    # 3: no target, unanimous -> agree; 4: split, target 2 that nobody picks -> relabel
    assert r.status.tolist() == ["agree", "relabel", "relabel", "agree", "relabel"]
    assert r.label.tolist() == [0, 1, 0, 2, 1]  # face 2: mean (0.5, 0.4, 0.1)
    assert np.allclose(r.soft, (a + b) / 2)
    t = vote(np.stack([a, b]), targets, threshold=0.6)
    assert t.status.tolist() == ["agree", "relabel", "drop", "agree", "drop"] and t.label[2] == -1
    s = summarise(t, targets, list(PATTERN_CLASSES))
    assert (s["agree"], s["relabel"], s["drop"]) == (2, 1, 2) and s["per_class"][PATTERN_CLASSES[0]]["relabel"] == 1
    assert vote(a[None], targets[:5]).status.tolist()[0] == "agree"  # one annotator works too
    with pytest.raises(ValueError, match="annotators, faces, classes"):
        vote(a)


def test_train_annotator_learns_patterns_and_labels_a_set(pipe_dir: Path, patterns: Path, tmp_path: Path) -> None:
    out = call(train_annotator, [patterns], tmp_path / "feranno", pipeline=str(pipe_dir), grid=4, dim=16, heads=2,
                          attention_tokens=5, epochs=15, batch_size=16, lr=3e-3, read_batch_size=16)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 15 and max(r["val_accuracy"] for r in rows) >= 0.9
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["generator"] == str(pipe_dir) and len(cfg["generator_sha256"]) == 64
    probe = call(train_annotator, [patterns], tmp_path / "probe", pipeline=str(pipe_dir), kind="probe", epochs=5,
                            batch_size=16, read_batch_size=16)
    assert json.loads((probe / "config.json").read_text())["kind"] == "probe"

    torch.manual_seed(0)
    clf = ExpressionClassifier(ClassifierConfig("fer_resnet_xs", list(PATTERN_CLASSES), (1, 16, 16),
                                                model_kwargs={"widths": (4, 8, 8, 8), "depths": (1, 1, 1, 1)}))
    clf.save_pretrained(tmp_path / "clf")
    labelled = label(patterns, tmp_path / "labelled", [str(out), str(tmp_path / "clf")], split="test")
    d = DatasetFolder(labelled)
    recs = list(d.records())
    assert len(recs) == 3 * 8  # nothing dropped without a threshold
    for r in recs:
        assert r.meta["vote"] in ("agree", "relabel") and set(r.meta["votes"]) == {str(out), str(tmp_path / "clf")}
        assert r.meta["target"] in PATTERN_CLASSES and abs(sum(r.label_probs) - 1) < 1e-5
        assert r.meta["vote"] != "agree" or r.expression == r.meta["target"]
    stats = d.header.stats["label"]
    assert stats["faces"] == 24 and stats["agree"] + stats["relabel"] == 24
    strict = label(patterns, tmp_path / "strict", [str(out), str(tmp_path / "clf")], split="test", threshold=0.99)
    assert len(DatasetFolder(strict)) == DatasetFolder(strict).header.stats["label"]["agree"]


def test_feature_cache_is_reused_and_gives_the_same_head(pipe_dir: Path, patterns: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import synfer.labeling.train_annotator as ta

    kw = dict(pipeline=str(pipe_dir), kind="probe", epochs=2, batch_size=16, read_batch_size=16,
              feature_cache=tmp_path / "cache")
    first = call(train_annotator, [patterns], tmp_path / "a", **kw)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2  # train (with flip) and val

    def no_reading(*args, **kwargs):
        raise AssertionError("features were read again instead of coming from the cache")

    monkeypatch.setattr(ta, "read_features", no_reading)
    second = call(train_annotator, [patterns], tmp_path / "b", **kw)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    with pytest.raises(AssertionError, match="read again"):  # another reading option is another cache entry
        call(train_annotator, [patterns], tmp_path / "c", **{**kw, "timestep": 5})


def test_train_annotator_resumes_exactly(pipe_dir: Path, patterns: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    kw = dict(pipeline=str(pipe_dir), grid=4, dim=16, heads=2, attention_tokens=5, epochs=3, batch_size=16,
              read_batch_size=16, feature_cache=tmp_path / "cache")
    call(train_annotator, [patterns], tmp_path / "warm", **{**kw, "epochs": 1})  # fills the feature cache: the runs
    straight = call(train_annotator, [patterns], tmp_path / "straight", **kw)  # below all read the same way
    with stopped_after_saves(monkeypatch):  # killed after epoch 1
        call(train_annotator, [patterns], tmp_path / "run", **kw)
    with pytest.raises(ValueError, match="--resume"):
        call(train_annotator, [patterns], tmp_path / "run", **kw)
    resumed = call(train_annotator, [patterns], tmp_path / "run", resume=True, **kw)
    assert (straight / "model.safetensors").read_bytes() == (resumed / "model.safetensors").read_bytes()
    epochs = [json.loads(x)["epoch"] for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_feranno_refuses_a_changed_generator(pipe_dir: Path, patterns: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    gen = tmp_path / "gen"
    shutil.copytree(pipe_dir, gen)
    out = call(train_annotator, [patterns], tmp_path / "feranno", pipeline=str(gen), kind="probe", epochs=1,
                          batch_size=16, read_batch_size=16, limit=16)
    # a new AU adapter (or sampler defaults) leaves what FERAnno reads unchanged: the head stays valid
    (gen / "au_adapter").mkdir()
    save_file({"w": torch.ones(2)}, gen / "au_adapter" / "diffusion_pytorch_model.safetensors")
    assert isinstance(load_annotator(out), FERAnnotator)
    cfg_file = out / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "generator_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="retrain"):
        load_annotator(out)
    cfg_file.write_text(json.dumps(cfg))
    unet_file = next((gen / "unet").glob("*.safetensors"))
    weights = load_file(unet_file)
    name = next(iter(weights))
    save_file({**weights, name: weights[name] + 1}, unet_file)  # a retrained UNet
    with pytest.raises(ValueError, match="retrain"):
        load_annotator(out)
