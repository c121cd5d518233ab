"""synfer generate on a tiny saved pipeline: the plan, records and their parameters, reproducibility, resume after
SIGKILL, semantic guidance lowering the classifier's loss, and a guidance model refused as judge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_pipe, torchrun
from synfer.core.dataset import DatasetFolder, DatasetWriter, Record
from synfer.core.options import SamplerOptions
from synfer.core.provenance import refuse_judge
from synfer.generator.guidance import SemanticGuidance, predict_x0
from synfer.models.classifiers import ClassifierConfig, ExpressionClassifier
from synfer.schema import AUSet
from synfer.synthesize.generate import generate, plan_faces

EXPR = ["neutral", "happiness"]


@pytest.fixture()
def prepared(tmp_path: Path) -> Path:
    with DatasetWriter(tmp_path / "prep", EXPR, aus=AUSet(("AU01", "AU12"))) as w:
        for i in range(6):
            e = EXPR[i % 2]
            w.add(Record(id=f"r{i}", split="train", source="t", expression=e,
                         aus=[0.1 * i, 0.9 if e == "happiness" else 0.05]), Image.new("L", (16, 16)))
    return tmp_path / "prep"


def tiny_classifier(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    clf = ExpressionClassifier(ClassifierConfig("fer_resnet_xs", EXPR, (1, 16, 16),
                                                model_kwargs={"widths": (4, 8, 8, 8), "depths": (1, 1, 1, 1)}))
    clf.save_pretrained(path)
    return path


def test_plan_is_deterministic_and_draws_class_aus(prepared: Path) -> None:
    a = plan_faces({"neutral": 3, "happiness": 2}, ("AU01", "AU12"), str(prepared), seed=0)
    b = plan_faces({"neutral": 3, "happiness": 2}, ("AU01", "AU12"), str(prepared), seed=0)
    assert a == b and [f.id for f in a] == [f"syn{k:07d}" for k in range(5)]
    assert [f.expression for f in a] == ["neutral"] * 3 + ["happiness"] * 2
    assert all(f.aus[1] == pytest.approx(0.9) for f in a if f.expression == "happiness")  # that class's faces
    assert all(f.aus[1] == pytest.approx(0.05) for f in a if f.expression == "neutral")
    assert len({f.seed for f in a}) == 5
    assert plan_faces({"neutral": 3, "happiness": 2}, ("AU01", "AU12"), str(prepared), seed=1) != a
    jit = plan_faces({"neutral": 50}, ("AU01", "AU12"), str(prepared), seed=0, au_jitter=0.1)
    assert all(0 <= v <= 1 for f in jit for v in f.aus) and len({tuple(f.aus) for f in jit}) > 3


def test_generate_writes_the_planned_records(pipe_dir: Path, prepared: Path, tmp_path: Path) -> None:
    out = generate(tmp_path / "syn", pipeline=str(pipe_dir), counts={"happy": 2, "neutral": 3}, expressions=EXPR,
                   au_source=str(prepared), coarse=["an old man", "a young woman"], batch_size=2, seed=3)
    d = DatasetFolder(out, expect_expressions=EXPR, expect_aus=("AU01", "AU12"))
    recs = sorted(d.records(), key=lambda r: r.id)
    assert [r.expression for r in recs] == ["neutral"] * 3 + ["happiness"] * 2
    for r in recs:
        assert r.source == "synfer-generate" and r.split == "train" and r.caption
        assert r.meta["num_inference_steps"] == 2 and r.meta["guidance"] is None
        assert r.meta["coarse"] in ("an old man", "a young woman") and len(r.meta["generator"]["sha256"]) == 64
        assert d.load_image(r.image).size == (16, 16)
    assert (out / "preview.png").is_file()
    again = generate(tmp_path / "again", pipeline=str(pipe_dir), counts={"happy": 2, "neutral": 3}, expressions=EXPR,
                     au_source=str(prepared), coarse=["an old man", "a young woman"], batch_size=5, seed=3,
                     preview=False)
    d2 = DatasetFolder(again)
    for r in recs:  # the same faces whatever the batching (up to float rounding of batch-size-dependent kernels)
        a = np.asarray(d.load_image(r.image), dtype=int)
        b = np.asarray(d2.load_image(f"images/{r.id}.png"), dtype=int)
        assert np.abs(a - b).max() <= 2
    with pytest.raises(ValueError, match="not among the expressions"):
        generate(tmp_path / "bad", pipeline=str(pipe_dir), counts={"fear": 1}, expressions=EXPR)


def test_resume_after_an_interrupted_run(pipe_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped after two shards (Ctrl-C in the third flush) resumes to exactly the planned faces, the same
    faces as an uninterrupted run; the SIGKILL variant is the slow test below."""
    from synfer.core import dataset

    kw = dict(pipeline=str(pipe_dir), expressions=EXPR, per_class=5, batch_size=2, flush_every=2,
              au_source="prototype", preview=False)
    real_flush, flushes = dataset.DatasetWriter.flush, []

    def stop_in_the_third_flush(self):
        if self._buffer:
            flushes.append(len(self._buffer))
            if len(flushes) == 3:
                raise KeyboardInterrupt
        real_flush(self)

    monkeypatch.setattr(dataset.DatasetWriter, "flush", stop_in_the_third_flush)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "syn", **kw)
    monkeypatch.setattr(dataset.DatasetWriter, "flush", real_flush)
    assert 4 <= len(DatasetFolder(tmp_path / "syn", allow_incomplete=True)) < 10  # stopped mid-way
    d = DatasetFolder(generate(tmp_path / "syn", **kw, resume=True))
    straight = DatasetFolder(generate(tmp_path / "straight", **kw))
    assert sorted(d.ids) == sorted(straight.ids) == [f"syn{k:07d}" for k in range(10)]
    for r in straight.records():
        a = np.asarray(d.load_image(r.image), dtype=int)
        assert np.abs(a - np.asarray(straight.load_image(r.image), dtype=int)).max() <= 2


@pytest.mark.slow
def test_resume_after_sigkill(pipe_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "syn"
    cmd = [sys.executable, "-m", "synfer", "generate", str(out), "--pipeline", str(pipe_dir),
           "--expressions", "neutral,happiness", "--per-class", "40", "--batch-size", "2", "--flush-every", "4",
           "--au-source", "prototype", "--no-preview"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("records-*.parquet"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    listed = len(DatasetFolder(out, allow_incomplete=True)) if (out / "dataset.json").is_file() else 0
    assert 0 < listed < 80, "the run should have been killed mid-way"
    subprocess.run(cmd + ["--resume"], env=env, check=True, capture_output=True)
    d = DatasetFolder(out)
    ids = d.ids
    assert sorted(ids) == [f"syn{k:07d}" for k in range(80)] and len(set(ids)) == 80
    for r in d.records():
        d.load_image(r.image).load()


def test_two_processes_share_the_plan(pipe_dir: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (accelerate's PartialState on gloo): each writes its share into its own shards, the main process
    finalises; the folder equals a one-process run's plan, and a 1-process --resume of it has nothing to do."""
    out = tmp_path / "syn"
    args = ["generate", str(out), "--pipeline", str(pipe_dir), "--expressions", "neutral,happiness",
            "--per-class", "6", "--batch-size", "2", "--flush-every", "2", "--au-source", "prototype"]
    torchrun(args)  # 2 CPU processes on gloo
    d = DatasetFolder(out)
    assert sorted(d.ids) == [f"syn{k:07d}" for k in range(12)]
    assert any("-p1-" in p.name for p in out.glob("records-*.parquet"))  # the second process wrote shards
    assert d.header.stats["generate"]["processes"] == 2 and (out / "preview.png").is_file()
    one = generate(tmp_path / "one", pipeline=str(pipe_dir), expressions=EXPR, per_class=6, batch_size=2,
                   au_source="prototype", preview=False)
    d1 = DatasetFolder(one)
    for r in d1.records():  # the same faces as one process draws
        a = np.asarray(d.load_image(r.image), dtype=int)
        assert np.abs(a - np.asarray(d1.load_image(r.image), dtype=int)).max() <= 2
    generate(out, pipeline=str(pipe_dir), expressions=EXPR, per_class=6, batch_size=2, flush_every=2,
             au_source="prototype", resume=True)
    assert len(DatasetFolder(out)) == 12


def test_layout_initialisation_starts_from_real_faces(pipe_dir: Path, prepared: Path, tmp_path: Path) -> None:
    out = generate(tmp_path / "syn", pipeline=str(pipe_dir), expressions=EXPR, per_class=2, au_source="prototype", layout=prepared, layout_strength=0.5, preview=False, sampling=SamplerOptions(num_inference_steps=4))
    d = DatasetFolder(out)
    picks = [r.meta["layout"] for r in d.records()]
    assert all(p["strength"] == 0.5 and p["face"] in {f"r{i}" for i in range(6)} for p in picks)
    assert d.header.provenance[-1]["config"]["layout"]["faces"] == 6
    with pytest.raises(ValueError, match="strength"):
        generate(tmp_path / "bad", pipeline=str(pipe_dir), expressions=EXPR, per_class=1, layout=prepared,
                 layout_strength=0.0)


def guidance_step(pipe, guide: SemanticGuidance, aus: torch.Tensor):
    """One guided step on fixed latents at the third of 4 steps: (embeddings before, after, loss of embeddings)."""
    pipe.scheduler.set_timesteps(4)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    embeds, _ = pipe.encode_prompt(["a happy face", "a calm face"], torch.device("cpu"))
    tokens, _ = pipe.encode_aus(aus, 2, torch.device("cpu"))
    t = pipe.scheduler.timesteps[2]

    def loss_of(e: torch.Tensor) -> float:
        with torch.no_grad(), pipe.au_adapter.applied_to(pipe.unet):
            out = pipe.unet(latents, t, encoder_hidden_states=torch.cat([e, tokens], 1)).sample
            return float(guide.loss(pipe.decode_latents(predict_x0(pipe.scheduler, latents, out, t))))

    with torch.no_grad(), pipe.au_adapter.applied_to(pipe.unet):
        new = guide(pipe, 1, pipe.scheduler.timesteps[1], {"latents": latents, "prompt_embeds": embeds,
                                                           "au_tokens": tokens})["prompt_embeds"]
    return embeds, new, loss_of


def test_semantic_guidance_step_lowers_the_classifier_loss(parts: dict, tmp_path: Path) -> None:
    pipe = make_pipe(parts)
    clf = ExpressionClassifier.from_pretrained(tiny_classifier(tmp_path / "clf"))
    targets = torch.tensor([1, 0])
    guide = SemanticGuidance(clf, targets, scale=0.02, window=(0.0, 1.0))
    embeds, new, loss_of = guidance_step(pipe, guide, torch.tensor([[0.2, 0.8], [0.1, 0.0]]))
    assert new.shape == embeds.shape and not torch.equal(new, embeds)
    assert loss_of(new) < loss_of(embeds)
    assert guide.guided_steps(10) == set(range(1, 10)) and SemanticGuidance(clf, targets).guided_steps(10) == {6, 7, 8, 9}
    assert guide(pipe, 3, pipe.scheduler.timesteps[3], {}) == {}  # no step after the last one


def test_guidance_model_never_judges_its_own_set(pipe_dir: Path, tmp_path: Path) -> None:
    guide = tiny_classifier(tmp_path / "guide", seed=0)
    judge = tiny_classifier(tmp_path / "judge", seed=1)
    out = generate(tmp_path / "syn", pipeline=str(pipe_dir), per_class=2, expressions=EXPR, au_source="prototype",
                   semantic_guidance=0.05, guidance_window=(0.0, 1.0), guidance_model=str(guide), preview=False)
    rec = next(DatasetFolder(out).records())
    assert rec.meta["guidance"]["model"] == str(guide) and rec.meta["guidance"]["scale"] == 0.05
    with pytest.raises(ValueError, match="guided the generation"):
        refuse_judge(out, guide)
    refuse_judge(out, judge)  # an independent classifier may judge
    from synfer.classifiers.evaluate import evaluate

    with pytest.raises(ValueError, match="cannot judge"):
        evaluate(str(guide), out, split="train")
    assert "accuracy" in evaluate(str(judge), out, split="train").lower()
    meta_lines = [json.loads(m) for m in DatasetFolder(out).column("meta")]
    assert all(m["guidance"]["model_sha256"] for m in meta_lines)


def test_au_only_guidance_lowers_the_au_loss(parts: dict, tmp_path: Path) -> None:
    from synfer.annotate.au.distilled import DistilledAUEstimator

    pipe = make_pipe(parts)
    torch.manual_seed(0)
    cfg = ClassifierConfig("fer_resnet_xs", ["AU01", "AU12", "face_presence"], (1, 16, 16),
                           model_kwargs={"widths": (4, 8, 8, 8), "depths": (1, 1, 1, 1)}, extra={"kind": "au-estimator"})
    est = DistilledAUEstimator(ExpressionClassifier(cfg).eval())
    clf = ExpressionClassifier.from_pretrained(tiny_classifier(tmp_path / "clf"))
    au_targets = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    guide = SemanticGuidance(clf, torch.tensor([1, 0]), scale=0.02, window=(0.0, 1.0), au_estimator=est,
                             au_targets=au_targets, au_weight=1.0, ce_weight=0.0)
    embeds, new, loss_of = guidance_step(pipe, guide, au_targets)
    assert loss_of(new) < loss_of(embeds)
