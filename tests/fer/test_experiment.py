"""synfer experiment end to end at toy scale: every row trains and is scored, the ablations are judged, and a rerun
reuses every cell."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from conftest import PATTERN_CLASSES, tiny_clip_encoder, tiny_vae_unet, write_pattern_dataset
from synfer.generator.pipeline import SynferPipeline
from synfer.models.au_adapter import AUAdapter
from synfer.models.classifiers import ClassifierConfig, ExpressionClassifier
from synfer.study.experiment import experiment

TINY = {"architecture": "fer_resnet_xs", "model_kwargs": {"widths": [8, 16, 16, 32], "depths": [1, 1, 1, 1]},
        "epochs": 1, "batch_size": 8, "lr": 0.05, "augment": "none"}


def tiny_classifier(path: Path, seed: int) -> str:
    torch.manual_seed(seed)
    ExpressionClassifier(ClassifierConfig("fer_resnet_xs", list(PATTERN_CLASSES), (1, 16, 16), model_kwargs={
        "widths": (4, 8, 8, 8), "depths": (1, 1, 1, 1)})).save_pretrained(path)
    return str(path)


def study_kwargs(tmp_path: Path) -> dict:
    """The toy study: pattern faces, a tiny generator, tiny judge / annotator / guidance classifiers."""
    real = write_pattern_dataset(tmp_path / "real", {"train": 8, "val": 4, "test": 4})
    vae, unet = tiny_vae_unet()
    pipe = SynferPipeline(vae=vae, unet=unet, text_encoder=tiny_clip_encoder(tmp_path / "tok"),
                          scheduler=DDIMScheduler(), au_adapter=AUAdapter.for_unet(unet, ["AU01", "AU12"],
                                                                                   hidden_dim=16))
    pipe.set_generation_defaults(num_inference_steps=2)
    pipe.save_pretrained(tmp_path / "gen")
    kw = dict(real=str(real), val=str(real), test=str(real), judge=tiny_classifier(tmp_path / "judge", 0),
              generator=str(tmp_path / "gen"), annotators=[tiny_classifier(tmp_path / "annotator", 1)],
              classifier=TINY, synthetic_scales=[1], mix_scales=[1], ablation_scale=0.5,
              guidance={"semantic_guidance": 0.05, "guidance_window": [0.0, 1.0],
                        "guidance_model": tiny_classifier(tmp_path / "guide", 2)},
              generation={"batch_size": 8}, work=tmp_path / "work")
    return kw


def test_experiment_runs_every_row_and_reuses_cells(tmp_path: Path) -> None:
    kw = study_kwargs(tmp_path)
    report = experiment(**kw, seeds=[0, 1], record=tmp_path / "record")
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    assert list(results["rows"]) == ["real", "real-control", "syn-1x", "real+syn-1x", "ablation-text", "ablation-aus",
                                     "ablation-aus-class-mean", "ablation-aus+guidance",
                                     "ablation-aus+guidance+voting"]
    rows = results["rows"]
    for name, r in rows.items():  # two seeds where the study wants a spread, one elsewhere
        assert len(r["accuracy"]) == (2 if name in ("real", "real+syn-1x") else 1)
        assert len(r["predictions"]) == len(results["test_labels"])  # the first seed's test predictions
        first = 100 * np.mean(np.asarray(r["predictions"]) == np.asarray(results["test_labels"]))
        assert r["accuracy"][0] == pytest.approx(first, abs=0.01)
        lo, hi = r["vs_real"]["ci95"]
        assert lo <= r["vs_real"]["difference"] <= hi
    assert rows["real"]["vs_real"] == {"difference": 0.0, "ci95": [0.0, 0.0], "resamples": 10000, "faces": 12}
    # the rows at both seeds: each seed's predictions, and the mixed row against real seed by seed and on the mean
    assert [len(p) for p in rows["real+syn-1x"]["predictions_by_seed"]] == [12, 12]
    assert rows["real+syn-1x"]["predictions_by_seed"][0] == rows["real+syn-1x"]["predictions"]
    seeds = rows["real+syn-1x"]["vs_real_seeds"]
    assert seeds["seeds"] == [0, 1] and seeds["by_seed"][0] == rows["real+syn-1x"]["vs_real"]
    correct = {r: np.asarray(rows[r]["predictions_by_seed"]) == np.asarray(results["test_labels"])
               for r in ("real", "real+syn-1x")}
    assert seeds["by_seed"][1]["difference"] == pytest.approx(
        100 * (correct["real+syn-1x"][1].mean() - correct["real"][1].mean()), abs=0.01)
    assert seeds["mean"]["difference"] == pytest.approx(
        100 * (correct["real+syn-1x"].mean() - correct["real"].mean()), abs=0.01)
    assert "vs_real_seeds" not in rows["real"] and "vs_real_seeds" not in rows["syn-1x"]
    configs = {row: json.loads((Path(r["model"][0]) / "train_config.json").read_text())["config"]
               for row, r in rows.items()}
    assert configs["real-control"]["epochs"] == 2 * configs["real"]["epochs"]  # the mixed row's steps
    assert configs["real+syn-1x"]["train"][0] == configs["real"]["train"][0]
    # synthetic sets follow the real class distribution: 1x = 8 faces per class, the 0.5x ablations 4
    from synfer.core.dataset import DatasetFolder

    syn = DatasetFolder(configs["syn-1x"]["train"][0])
    assert len(syn.select_split("train")) <= 24 and len(DatasetFolder(configs["ablation-text"]["train"][0])) == 12
    assert set(results["quality"]) == {"ablation-text", "ablation-aus", "ablation-aus-class-mean",
                                       "ablation-aus+guidance", "ablation-aus+guidance+voting", "syn-1x"}
    assert all(q["privacy"]["pixels"]["threshold"] >= 0 for q in results["quality"].values())
    text = report.read_text()
    assert "| real |" in text and "FD-FER" in text and "near-copies" in text and "Real training faces: 24" in text
    assert set(results["probes"]) == {"real", "syn-1x"} and "10-shot" in text
    page = (tmp_path / "work" / "report.html").read_text()
    for fig in ("scaling.png", "per_class.png", "confusion-real.png", "samples-ablation_aus_guidance.png",
                "closest-syn_1x.png", "au-sweep-AU12.png"):
        assert (tmp_path / "work" / "figures" / fig).is_file() and f"figures/{fig}" in page
    for target in ("synthetic only at 1x >= 90% of real only", "real + synthetic 1x beats real only by >= 1 point",
                   "text -> aus:", "aus+guidance -> aus+guidance+voting:"):
        assert target in text and text.split(target)[1].split("\n")[0].rstrip().endswith(("met", "missed"))
    assert "the control (real at the mixed row's steps)" in text
    first = {}
    for c in results["cells"]:
        first.setdefault(c["cell"], c)
    assert not any(c["cached"] for name, c in first.items() if name.startswith("train-real-"))
    experiment(**kw, seeds=[0, 1], record=tmp_path / "record")  # again: nothing recomputed
    again = json.loads((tmp_path / "work" / "results.json").read_text())
    assert all(c["cached"] for c in again["cells"]) and again["rows"] == results["rows"]

    # another machine: WORK is gone, the record holds every finished cell; nothing is trained or generated again
    # (only the AU sweep, whose image the report copies, is drawn again)
    import shutil

    shutil.rmtree(tmp_path / "work")
    experiment(**kw, seeds=[0, 1], record=tmp_path / "record")
    moved = json.loads((tmp_path / "work" / "results.json").read_text())
    assert moved["rows"] == results["rows"] and moved["quality"] == results["quality"]
    assert {c["cell"] for c in moved["cells"] if not c["cached"]} == {"au-sweep-AU12"}

    # a report of what is done computes nothing: a row whose cell is not recorded is listed as missing
    for pattern in ("train-ablation-aus-s0-*.json", "train-real+syn-1x-s1-*.json"):
        for f in (tmp_path / "record").glob(pattern):
            f.unlink()
    shutil.rmtree(tmp_path / "work")
    experiment(**kw, seeds=[0, 1], record=tmp_path / "record", recorded_only=True)
    part = json.loads((tmp_path / "work" / "results.json").read_text())
    assert all(c["cached"] for c in part["cells"])
    # the sweep's image is gone too
    assert [m["what"] for m in part["missing"]] == ["real+syn-1x seed 1", "ablation-aus", "au-sweeps"]
    assert "ablation-aus" not in part["rows"] and part["rows"]["syn-1x"] == results["rows"]["syn-1x"]
    mixed, full = part["rows"]["real+syn-1x"], results["rows"]["real+syn-1x"]  # the seed that is done
    assert mixed["seeds"] == [0] and mixed["accuracy"] == full["accuracy"][:1] and mixed["vs_real"] == full["vs_real"]
    assert "vs_real_seeds" not in mixed and "predictions_by_seed" not in mixed
    assert "ablation-aus" not in part["quality"] and part["probes"] == results["probes"]
    assert "Not yet computed" in (tmp_path / "work" / "report.md").read_text()


def test_a_recorded_cell_is_recomputed_where_its_files_are_needed(tmp_path: Path) -> None:
    from synfer.study.cells import Cells

    calls: list[str] = []
    accuracy = {"train-x": [50.0, 50.0], "train-y": [50.0, 51.0]}  # y's step does not reproduce its result

    def produce(name: str) -> Callable[[Path], dict]:
        def run(d: Path) -> dict:
            calls.append(name)
            (d / "model").mkdir()
            # timings and paths into the cell's own folder differ between runs without the result differing
            return {"model": str(d / "model"), "accuracy": accuracy[name][calls.count(name) - 1],
                    "train_seconds": 10.0 * len(calls), "figures": {"loss": str(d / "model" / "loss.png")}}
        return run

    first = Cells(tmp_path / "a", tmp_path / "record")
    out = {n: first.run(n, {"data": [n]}, produce(n)) for n in accuracy}
    other = Cells(tmp_path / "b", tmp_path / "record")  # another machine: only the record
    assert other.run("train-x", {"data": ["train-x"]}, produce("train-x")) == out["train-x"] and len(calls) == 2
    import shutil

    shutil.rmtree(tmp_path / "a")
    for n in accuracy:  # computed again for the files: the new model, the first run's result (read on test once)
        again = other.run(n, {"data": [n]}, produce(n), files=True)
        assert again["accuracy"] == 50.0 and Path(again["model"]).is_dir() and again["model"].startswith(
            str(tmp_path / "b"))
        assert again["train_seconds"] == out[n]["train_seconds"]  # the recorded cost stays the first run's
        cell = other.lookup(n, {"data": [n]})
        recorded = json.loads((tmp_path / "record" / f"{n}-{cell['key']}.json").read_text())
        assert cell["outputs"] == again and recorded["outputs"] == again
    assert calls == ["train-x", "train-y", "train-x", "train-y"]
    x, y = (other.lookup(n, {"data": [n]}) for n in accuracy)
    assert x["recomputed_same"] and "recomputed_outputs" not in x and "recomputed_seconds" in x
    assert x["outputs"]["figures"]["loss"].startswith(str(tmp_path / "b"))  # agreeing values: the new run's paths
    assert not y["recomputed_same"] and y["recomputed_outputs"] == {"accuracy": 51.0}


def test_an_interrupted_recomputation_of_a_recorded_cell_resumes(tmp_path: Path) -> None:
    from synfer.study.cells import Cells

    seen: list[bool] = []

    def produce(d: Path, fail: bool = False) -> dict:
        seen.append((d / "data").exists())  # what a resumable step sees: its partial folder
        (d / "data").mkdir(exist_ok=True)
        if fail:
            raise KeyboardInterrupt
        (d / "data" / "done").write_text("1")
        return {"data": str(d / "data")}

    Cells(tmp_path / "a", tmp_path / "record").run("generate-x-c0", {"n": 1}, produce)
    other = Cells(tmp_path / "b", tmp_path / "record")  # another machine: the record, no files
    with pytest.raises(KeyboardInterrupt):
        other.run("generate-x-c0", {"n": 1}, lambda d: produce(d, fail=True), files=True)
    # the partial folder exists but the cell did not finish here: it is resumed, not handed to a reader
    out = other.run("generate-x-c0", {"n": 1}, produce, files=True)
    assert seen == [False, False, True] and (Path(out["data"]) / "done").is_file()
    assert other.run("generate-x-c0", {"n": 1}, lambda d: pytest.fail("done here"), files=True) == out


def test_cells_reuse_identical_work_under_another_name(tmp_path: Path) -> None:
    from synfer.study.cells import Cells

    calls: list[str] = []

    def produce(name: str):
        return lambda d: calls.append(name) or {"out": str(d)}

    cells = Cells(tmp_path)
    first = cells.run("train-syn-1x-s0", {"data": ["a"], "opts": {"lr": 0.1}}, produce("syn"))
    # the same inputs under the ablation's name: the syn-1x training is reused, not repeated
    assert cells.run("train-ablation-aus+guidance-s0", {"opts": {"lr": 0.1}, "data": ["a"]}, produce("abl")) == first
    assert cells.log[-1] == {"cell": "train-ablation-aus+guidance-s0", "key": cells.key({"data": ["a"],
                             "opts": {"lr": 0.1}}), "cached": True, "from": "train-syn-1x-s0"}
    cells.run("train-ablation-aus-s0", {"data": ["b"], "opts": {"lr": 0.1}}, produce("other"))
    assert calls == ["syn", "other"]


def test_reduced_run_trains_on_a_subset_of_the_real_faces(tmp_path: Path) -> None:
    kw = study_kwargs(tmp_path)
    experiment(**kw, rows=["real", "real+syn-1x"], reduced=True,
               reduced_sizes={"real_limit": 12, "epochs": 1, "batch_size": 5})
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    assert results["real_train_faces"] == 12 and results["real_class_counts"] == dict.fromkeys(PATTERN_CLASSES, 4)
    config = json.loads((Path(results["rows"]["real+syn-1x"]["model"][0]) / "train_config.json").read_text())
    assert config["config"]["batch_size"] == 5 and config["data"][next(iter(config["data"]))]["faces"] == 12


def test_paired_bootstrap_interval_covers_the_difference() -> None:
    from synfer.study.stats import paired_bootstrap

    rng = np.random.default_rng(0)
    a = rng.random(3000) < 0.80
    b = a.copy()
    flip = rng.choice(3000, 60, replace=False)  # b wrong on 60 faces a got right: a is 2 points better
    b[flip] = False
    r = paired_bootstrap(a, b)
    true = 100 * (a.mean() - b.mean())
    assert r["difference"] == pytest.approx(true, abs=0.01) and r["ci95"][0] > 0 and r["ci95"][0] < true < r["ci95"][1]
    assert paired_bootstrap(a, a)["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="same faces"):
        paired_bootstrap(a, b[:10])


def test_compare_to_real_pairs_each_seed_with_real_only_at_that_seed() -> None:
    from synfer.study.experiment import compare_to_real

    labels = np.zeros(100, dtype=int)

    def preds(correct: int) -> list[int]:
        return [0] * correct + [1] * (100 - correct)  # right on the first `correct` faces

    rows = {"real": {"seeds": [0, 1], "predictions": preds(80), "predictions_by_seed": [preds(80), preds(70)]},
            "mixed": {"seeds": [0, 1], "predictions": preds(81), "predictions_by_seed": [preds(81), preds(76)]},
            "other-seeds": {"seeds": [0, 2], "predictions": preds(75), "predictions_by_seed": [preds(75), preds(90)]},
            "one-seed": {"seeds": [0], "predictions": preds(60)}}
    compare_to_real(rows, labels)
    mixed = rows["mixed"]
    assert mixed["vs_real"]["difference"] == 1.0 and mixed["vs_real_seeds"]["seeds"] == [0, 1]
    assert [b["difference"] for b in mixed["vs_real_seeds"]["by_seed"]] == [1.0, 6.0]  # seed 1 against real seed 1
    mean = mixed["vs_real_seeds"]["mean"]
    assert mean["difference"] == 3.5 and mean["ci95"][0] <= 3.5 <= mean["ci95"][1]
    assert rows["one-seed"]["vs_real"]["difference"] == -20.0 and "vs_real_seeds" not in rows["one-seed"]
    assert "vs_real_seeds" not in rows["other-seeds"] and "vs_real_seeds" not in rows["real"]
    assert "vs_control" not in mixed  # no control row
    rows["real-control"] = {"seeds": [0], "predictions": preds(78)}
    rows["real+syn-1x"] = {"seeds": [1, 0], "predictions": preds(84), "predictions_by_seed": [preds(84), preds(83)]}
    compare_to_real(rows, labels)
    assert rows["real+syn-1x"]["vs_control"]["seed"] == 0
    assert rows["real+syn-1x"]["vs_control"]["difference"] == 5.0  # its seed-0 model, not its first
    assert "vs_control" not in rows["mixed"] and "vs_control" not in rows["real-control"]
    alone = {"syn": {"seeds": [0], "predictions": preds(50)}}
    compare_to_real(alone, labels)  # no real row: nothing to compare with
    assert "vs_real" not in alone["syn"]


def test_report_says_which_targets_are_met() -> None:
    from synfer.study.report import markdown

    def row(acc: float, diff: float, lo: float, hi: float) -> dict:
        return {"accuracy": [acc], "macro_f1": [20.0], "seeds": [0],
                "vs_real": {"difference": diff, "ci95": [lo, hi]}}

    q = {"faces": 10, "expression_accuracy": 30.0, "fd_fer": 1.5, "kid_fer": {"mean": 0.1},
         "diversity": {"synthetic": {"mean": 0.2}},
         "real_reference": {"expression_accuracy": 80.0, "mean_recall": 52.5, "expression_recall": {}}}
    results = {"reduced": False, "config": {"seeds": [0]}, "probes": {},
               "rows": {"real": row(80.0, 0, 0, 0), "real-control": row(80.2, 0.2, -0.5, 0.9),
                        "syn-1x": row(74.0, -6, -7, -5), "real+syn-1x": row(81.5, 1.5, 0.4, 2.6),
                        "ablation-text": row(60.0, -20, -21, -19), "ablation-aus": row(61.0, -19, -20, -18)},
               "quality": {"ablation-text": {**q, "expression_accuracy": 20.0}, "ablation-aus": q}}
    text = markdown(results)
    assert "74.00 / 80.00 = 92.5% -> met" in text and "+1.50 [+0.40, +2.60] -> met" in text
    assert "at 2x" not in text
    results["rows"]["syn-2x"] = row(76.0, -4, -5, -3)
    assert "  - at 2x: 76.00 / 80.00 = 95.0%" in markdown(results)
    # no test predictions: the classifier's step is read as stated; the judge's with its interval over the faces
    assert "text -> aus: classifier 60.00 -> 61.00, judge 20.0 -> 30.0 (+10.00 [-27.70, +47.70]) -> met" in text
    assert "the control (real at the mixed row's steps): +0.20 [-0.50, +0.90] vs real" in text
    results["rows"]["real+syn-1x"]["vs_control"] = {"seed": 0, "difference": 1.3, "ci95": [0.2, 2.4]}
    assert "vs the control at seed 0: +1.30 [+0.20, +2.40] -> the gain is more than the extra steps" in \
        markdown(results)
    results["rows"]["real+syn-1x"]["vs_control"]["ci95"] = [-0.1, 2.4]
    assert "-> the gain is not shown to be more than the extra steps" in markdown(results)
    results["rows"]["real+syn-1x"] = row(81.5, 1.5, -0.1, 3.1)  # the interval includes 0: missed
    assert "+1.50 [-0.10, +3.10] -> missed" in markdown(results)
    assert "| real | 80.00 | reference |" in markdown(results)
    # the classifier falls; the judge's small rise on few faces is within its interval: missed; on many, met
    results["rows"]["ablation-aus"] = row(59.0, -21, -22, -20)
    assert "judge 20.0 -> 30.0 (+10.00 [-27.70, +47.70]) -> missed" in markdown(results)
    results["quality"] = {r: {**v, "faces": 27947} for r, v in results["quality"].items()}
    assert "judge 20.0 -> 30.0 (+10.00 [+9.29, +10.71]) -> met" in markdown(results)


def test_unpaired_difference_interval() -> None:
    from synfer.study.stats import unpaired_difference

    r = unpaired_difference(78.49, 27947, 78.39, 27947)  # the study's text -> per-face AUs judge step
    assert r["difference"] == 0.1 and r["ci95"][0] < 0 < r["ci95"][1]
    assert r["ci95"][1] - r["ci95"][0] == pytest.approx(2 * 1.96 * np.sqrt(2 * 0.784 * 0.216 / 27947) * 100, abs=0.02)
    assert unpaired_difference(96.69, 27947, 78.39, 27947)["ci95"][0] > 17
    with pytest.raises(ValueError, match="accuracies in"):
        unpaired_difference(120.0, 10, 50.0, 10)


def test_report_judges_the_mixed_row_on_the_seed_mean_and_each_ablation_step_paired() -> None:
    from synfer.study.report import markdown

    labels = [0] * 100
    def row(correct: int, seeds: list[int] | None = None, **extra: object) -> dict:
        preds = [0] * correct + [1] * (100 - correct)  # right on the first `correct` faces
        return {"accuracy": [float(correct)], "macro_f1": [20.0], "seeds": seeds or [0], "predictions": preds,
                "vs_real": {"difference": 0.0, "ci95": [0.0, 0.0]}, **extra}

    def diff(d: float, lo: float, hi: float) -> dict:
        return {"difference": d, "ci95": [lo, hi]}

    # seed 0 alone would meet the target; the mean over both seeds does not: the report goes by the mean
    mixed = row(82, [0, 1], vs_real_seeds={"seeds": [0, 1], "mean": diff(0.8, -0.2, 1.8),
                                          "by_seed": [diff(2.0, 1.0, 3.0), diff(-0.4, -1.4, 0.6)]})
    mixed["vs_real"] = diff(2.0, 1.0, 3.0)
    results = {"reduced": False, "config": {"seeds": [0, 1]}, "probes": {}, "quality": {}, "test_labels": labels,
               "rows": {"real": row(80, [0, 1]), "real+syn-1x": mixed, "ablation-text": row(50),
                        "ablation-aus+guidance": row(60), "ablation-aus+guidance+voting": row(58)}}
    text = markdown(results)
    assert "(mean of seeds [0, 1]; the interval covers test faces, not seeds): +0.80 [-0.20, +1.80] -> missed" in text
    assert "  - seed 0: +2.00 [+1.00, +3.00]" in text and "  - seed 1: -0.40 [-1.40, +0.60]" in text
    assert "mean of seeds: +0.80 [-0.20, +1.80] (seed 0: +2.00 [+1.00, +3.00]; seed 1: -0.40" in text
    # aus is missing: aus+guidance is compared with text; every step with its paired interval
    assert "- text -> aus+guidance: classifier 50.00 -> 60.00 (+10.00 [" in text
    voting = "- aus+guidance -> aus+guidance+voting: classifier 60.00 -> 58.00 (-2.00 ["
    step = text.split(voting)[1].split("\n")[0]
    lo, hi = (float(x) for x in step.split("]")[0].split(", "))
    assert lo < -2.0 < hi <= 0 and step.endswith("-> missed")
    assert "text -> aus:" not in text and "aus-class-mean" not in text
    # a step up whose interval includes 0 does not count (no judge to say otherwise); class-mean AUs against text
    results["rows"].update({"ablation-aus-class-mean": row(51), "ablation-aus+guidance": row(61)})
    results["rows"]["ablation-aus+guidance"]["predictions"] = [0] * 50 + [1] + [0] * 10 + [1] * 39
    text = markdown(results)
    assert "- text -> aus-class-mean: classifier 50.00 -> 51.00 (+1.00 [" in text
    assert text.split("- text -> aus-class-mean:")[1].split("\n")[0].endswith("-> missed")
