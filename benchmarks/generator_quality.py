"""Benchmark: the generator's expression fidelity, AU control and speed (the generator issue's acceptance).

    python benchmarks/generator_quality.py PIPELINE PREPARED [--per-class 200] [--steps 10] [--scheduler dpm]
        [--au-model ../shared/data/mediapipe_face_landmarker/face_landmarker.task]

PIPELINE: a SynferPipeline folder with an AU adapter (``bundled`` for the bundled mini model). PREPARED: FER+ after
``synfer prepare`` (target AU vectors are drawn per class from its train split; the real baseline is its val split).

* Expression: per class, ``--per-class`` faces from class-level prompts (the template enricher, seed per face) and
  that class's mean AU vector (the per-class means of PREPARED's train split, which is what the bundled model's
  ``au_targets.json`` holds and what ``synfer generate`` uses by default); the bundled classifier's recognition rate
  of the target, next to its recall on the real FER+ validation faces of that class (acceptance: generated >= real,
  per class). The recognition rate of the per-face-target faces below is reported too ("text+aus").
* Per-face targets ("text+aus"): the same prompts with each face's AU vector drawn from a random real training face
  of its class (``synfer generate --au-source PREPARED``), for AU control. ``--prompt-aus target``: prompts that also
  spell out each face's target AUs, as ``synfer generate`` writes them; the default ``prototype`` names the class's
  EMFACS prototype AUs, so the per-face AU detail can only come through the adapter.
* AU control: MediaPipe (fast path) measures the generated faces; Pearson r per AU with the targets over the faces
  it sees as faces, mean over the AUs whose targets vary (std >= 0.02). Controls on the same prompts and seeds:
  the adapter removed, and the AU vectors shuffled within each class (r still against the original targets; with
  ``--prompt-aus target`` the prompts are rebuilt from the shuffled vectors, so neither route carries the targets).
* AU reference (what the measurement allows): on up to ``--reference`` real FER+ val faces with AUs, r between
  their stored AUs and MediaPipe's AUs of (a) a horizontally flipped copy (the estimator's test-retest) and (b) the
  pipeline VAE's reconstruction (``vae_au_ceiling.py``: generated faces decoded through this VAE can hardly do better).
* Speed: faces/s of the pipeline call on this machine at the given settings and at 25 steps, batch ``--batch``.
  This machine's speed varies between days (up to ~1.9x for the same model), so ``--speed-reference PIPELINE``
  (e.g. ``bundled``) times another pipeline at the same settings in the same run, interleaved, for a ratio.

Writes benchmarks/results/generator_quality.json and a sample grid per condition next to it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine_info, write_result
from vae_au_ceiling import DEFAULT_AU_MODEL, au_reference

from synfer.annotate.au.distill import au_agreement
from synfer.annotate.prompts import enrich_prompt
from synfer.classifiers.evaluate import predict
from synfer.core.dataset import DatasetFolder
from synfer.core.images import save_grid
from synfer.core.splits import load_split
from synfer.models.classifiers import DEFAULT_CLASSIFIER, ExpressionClassifier

#: the expression bar's run: every face at its class's mean AU vector (au_targets.json, generate's default)
CLASS_MEAN_RUN = "text+class-mean aus"


def make_scheduler(pipe, kind: str):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if kind == "ddim":
        return DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    if kind == "dpm":
        return DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++",
                                                       timestep_spacing="trailing", final_sigmas_type="zero")
    raise ValueError(kind)


def conditions(prepared: Path, per_class: int, seed: int, prompt_aus: str = "prototype"
               ) -> tuple[list[str], list[str], np.ndarray, list[str], np.ndarray]:
    """Targets: (expression per face, prompt per face, AU vectors (N, A) drawn per face, AU names, the class-mean
    AU vector of each face's class (N, A): ``au_targets.json``'s per-expression means of the train split)."""
    folder = DatasetFolder(prepared)
    pools: dict[str, list] = {}
    for rec in folder.records("train"):
        if rec.aus is not None:
            pools.setdefault(rec.expression, []).append(rec.aus)
    rng = np.random.default_rng(seed)
    exprs, aus = [], []
    for c in folder.expressions:
        pool = np.asarray(pools[c], dtype=np.float32)
        for k in rng.integers(0, len(pool), per_class):
            exprs.append(c)
            aus.append(pool[k])
    aus = np.stack(aus).astype(np.float32)
    au_names = list(folder.au_names)
    # rounded as write_au_targets stores them, so these are exactly the bundled au_targets.json's values
    means = {c: np.round(np.asarray(pools[c], dtype=np.float64).mean(0), 4) for c in folder.expressions}
    class_mean = np.stack([means[c] for c in exprs]).astype(np.float32)
    return exprs, prompts_for(exprs, aus, au_names, seed, prompt_aus), aus, au_names, class_mean


def prompts_for(exprs: list[str], aus: np.ndarray, au_names: list[str], seed: int, prompt_aus: str) -> list[str]:
    """Face i's prompt: the template enricher seeded per face; with ``prompt_aus="target"`` it spells out aus[i]."""
    return [enrich_prompt("", c, dict(zip(au_names, a.tolist(), strict=True)) if prompt_aus == "target" else None,
                          seed=seed * 100_003 + i) for i, (c, a) in enumerate(zip(exprs, aus, strict=True))]


def generate(pipe, prompts: list[str], aus: np.ndarray | None, args, steps: int) -> tuple[torch.Tensor, float]:
    """(N, C, H, W) images in [0, 1], and seconds; face i is seeded with seed + i whatever the batching."""
    out, t = [], 0.0
    for s in range(0, len(prompts), args.batch):
        gens = [torch.Generator().manual_seed(args.seed + i) for i in range(s, min(s + args.batch, len(prompts)))]
        a = None if aus is None else torch.from_numpy(aus[s:s + args.batch])
        t0 = time.perf_counter()
        imgs = pipe(prompts[s:s + args.batch], aus=a, num_inference_steps=steps,
                    guidance_scale_text=args.text_scale, guidance_scale_au=args.au_scale if a is not None else 0.0,
                    generator=gens, negative_prompt=args.negative_prompt, output_type="pt").images
        t += time.perf_counter() - t0
        out.append(imgs.cpu())
    return torch.cat(out), t


def measure_aus(estimator, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    u8 = (images[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    res = estimator.estimate(u8)
    return res.aus, res.face_presence


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pipeline")
    ap.add_argument("prepared", type=Path)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--steps", type=int, default=None, help="default: the pipeline's default_num_inference_steps")
    ap.add_argument("--scheduler", choices=["pipeline", "ddim", "dpm"], default="pipeline")
    ap.add_argument("--text-scale", type=float, default=None, help="default: the pipeline's")
    ap.add_argument("--au-scale", type=float, default=None, help="default: the pipeline's")
    ap.add_argument("--prompt-aus", choices=["prototype", "target"], default="prototype",
                    help="AU words of the prompts: the class's prototype (default) or each face's target AUs")
    ap.add_argument("--negative-prompt", default=None, help="text of the unconditional guidance row (default: \"\")")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classifier", default=DEFAULT_CLASSIFIER)
    ap.add_argument("--au-model", type=Path, default=DEFAULT_AU_MODEL)
    ap.add_argument("--skip-controls", action="store_true")
    ap.add_argument("--reference", type=int, default=1600, help="real val faces for the AU reference (0: skip)")
    ap.add_argument("--speed-reference", default=None,
                    help="another pipeline timed at the same settings in this run (interleaved rounds)")
    ap.add_argument("--note", default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "generator_quality.json")
    args = ap.parse_args()

    from synfer.annotate.au import create_estimator
    from synfer.generator.pipeline import load_pipeline

    pipe = load_pipeline(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    if args.scheduler != "pipeline":
        pipe.scheduler = make_scheduler(pipe, args.scheduler)
    defaults = pipe.generation_defaults()
    steps = args.steps or defaults["num_inference_steps"]
    args.text_scale = defaults["guidance_scale_text"] if args.text_scale is None else args.text_scale
    args.au_scale = defaults["guidance_scale_au"] if args.au_scale is None else args.au_scale
    adapter = pipe.au_adapter
    if adapter is None:
        raise SystemExit(f"{args.pipeline} has no AU adapter; AU control cannot be measured.")

    exprs, prompts, targets, au_names, class_mean = conditions(args.prepared, args.per_class, args.seed,
                                                                args.prompt_aus)
    if list(adapter.au_names) != au_names:
        raise SystemExit(f"the adapter's AU order {list(adapter.au_names)} differs from {args.prepared}'s {au_names}")
    clf = ExpressionClassifier.from_pretrained(args.classifier)
    names = list(clf.label_names)
    clf.check_labels(DatasetFolder(args.prepared).expressions, str(args.prepared))
    estimator = create_estimator("mediapipe", args.au_model)

    # real baseline: the classifier's recall per class on FER+ val
    val = load_split(args.prepared, "val", expressions=names)
    val_pred = predict(clf, val, torch.device("cpu")).argmax(-1)
    real = {c: float((val_pred[val.labels.numpy() == k] == k).mean()) for k, c in enumerate(names)}

    reference = au_reference(pipe.vae, args.prepared, estimator, args.reference) if args.reference else {}
    target_idx = np.array([names.index(e) for e in exprs])
    results: dict[str, dict] = {}
    runs = {CLASS_MEAN_RUN: class_mean, "text+aus": targets}
    if not args.skip_controls:
        rng = np.random.default_rng(args.seed + 1)
        shuffled = targets.copy()
        for c in names:  # within class: the prompt still matches, only the per-face AU detail is wrong
            rows = np.flatnonzero(np.array(exprs) == c)
            shuffled[rows] = targets[rng.permutation(rows)]
        runs.update({"adapter removed": None, "aus shuffled within class": shuffled})
    out_dir = args.out.parent / args.out.stem
    for name, aus in runs.items():
        if name == "adapter removed":
            pipe.set_au_adapter(None)
        # prompts that spell out the target AUs are shuffled with them: the shuffled control gives the generator
        # other faces' targets through both routes
        run_prompts = prompts_for(exprs, aus, au_names, args.seed, args.prompt_aus) \
            if name in ("aus shuffled within class", CLASS_MEAN_RUN) and args.prompt_aus == "target" else prompts
        images, secs = generate(pipe, run_prompts, aus, args, steps)
        pipe.set_au_adapter(adapter)
        pred = predict(clf, _as_split(images), torch.device("cpu")).argmax(-1)
        measured, presence = measure_aus(estimator, images)
        seen = presence >= 0.5
        # r against the per-face targets (for the class-mean run: against those means, i.e. between classes only)
        agree = au_agreement(measured[seen], (class_mean if name == CLASS_MEAN_RUN else targets)[seen],
                             tuple(au_names))
        per_class = {c: float((pred[target_idx == k] == k).mean()) for k, c in enumerate(names)}
        results[name] = {
            "expression_accuracy": float((pred == target_idx).mean()), "per_class": per_class,
            "au_mean_r": agree["mean_r"], "au_r": {n: v["r"] for n, v in agree["per_au"].items()},
            "faces_seen_by_mediapipe": int(seen.sum()), "faces_per_s": len(prompts) / secs,
        }
        grid = torch.cat([images[target_idx == k][:10] for k in range(len(names))])
        save_grid(grid, out_dir / f"{name.replace(' ', '_').replace('+', '_')}.png", nrow=10)
        print(name, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in results[name].items()
                     if k not in ("au_r",)}, flush=True)

    # speed at 25 steps too (a subset)
    n = min(len(prompts), 4 * args.batch)
    order = np.random.default_rng(0).permutation(len(prompts))[:n]
    _, secs25 = generate(pipe, [prompts[i] for i in order], targets[order], args, 25)
    speed_reference = None
    if args.speed_reference:
        speed_reference = compare_speed(pipe, load_pipeline(args.speed_reference), [prompts[i] for i in order],
                                        targets[order], args, steps)
        speed_reference["pipeline"] = args.speed_reference
        print("speed reference", speed_reference, flush=True)
    main_run = results["text+aus"]
    write_result(args.out, {
        "benchmark": "generator_quality", "pipeline": args.pipeline, "prepared": str(args.prepared),
        "per_class": args.per_class, "seed": args.seed, "scheduler": type(pipe.scheduler).__name__, "steps": steps,
        "guidance_scale_text": args.text_scale, "guidance_scale_au": args.au_scale,
        "negative_prompt": args.negative_prompt, "prompt_aus": args.prompt_aus, "batch": args.batch,
        "judge": args.classifier, "real_val_recall": real,
        "expression_pass": {c: results[CLASS_MEAN_RUN]["per_class"][c] >= real[c] for c in names},
        "expression_pass_per_face_targets": {c: main_run["per_class"][c] >= real[c] for c in names},
        "results": results, "au_reference": reference, "faces_per_s_at_25_steps": n / secs25,
        "speed_reference": speed_reference,
        "torch_threads": torch.get_num_threads(), "machine": machine_info(args.note),
    })


def compare_speed(pipe, other, prompts: list[str], aus: np.ndarray, args, steps: int,
                  rounds: int = 3) -> dict[str, float]:
    """Faces/s of ``pipe`` and ``other`` at the same settings, alternating rounds (the best round of each)."""
    other.set_progress_bar_config(disable=True)
    if args.scheduler != "pipeline":
        other.scheduler = make_scheduler(other, args.scheduler)
    best = {"this": 0.0, "reference": 0.0}
    for _ in range(rounds):
        for name, p in (("this", pipe), ("reference", other)):
            _, secs = generate(p, prompts, aus, args, steps)
            best[name] = max(best[name], len(prompts) / secs)
    return {"faces_per_s": best["this"], "reference_faces_per_s": best["reference"],
            "ratio": best["this"] / best["reference"], "faces": len(prompts), "rounds": rounds}


def _as_split(images: torch.Tensor):
    """Generated [0, 1] faces as a Split-like object for fer.evaluate.predict (uint8 images)."""
    from types import SimpleNamespace

    return SimpleNamespace(images=(images * 255).round().clamp(0, 255).to(torch.uint8))


if __name__ == "__main__":
    main()
