"""Benchmark: what semantic guidance costs per face, and synfer's pipeline against a stock diffusers one.

    python benchmarks/generation_cost.py [--pipeline bundled] [--batch 64] [--repeats 3] [--device cpu]

One batch of faces (8 expressions x batch/8, prompts and AU targets as ``synfer generate`` plans them, seed 0) is
generated, interleaving the variants in every repeat so that load on the machine hits them alike:

* ``synfer``: SynferPipeline at its defaults (text + AU classifier-free guidance, no semantic guidance);
* ``diffusers``: diffusers' stock ``StableDiffusionPipeline`` built from the same VAE, UNet (AU adapter installed)
  and scheduler, with the same steps and latents; its ``prompt_embeds`` are synfer's text + AU tokens and its
  negative ones "" + null tokens, so with guidance scale w it computes exactly synfer's rule at w_t = w_a = w
  (the images must agree; their largest difference is reported);
* ``semantic``: synfer + semantic guidance (``--scale``, ``--window``; the bundled classifier);
* ``semantic_au``: the same plus the AU term (distilled AU estimator, weight 1).

Reports the median and the minimum seconds per batch over the repeats, faces/s (median) and each variant's time
relative to ``synfer``: as a ratio of medians, of minima, and as the median of the per-round ratios (the most robust
on a shared machine, where load drifts between rounds)
(the generate issue's acceptance: semantic guidance <= 1.5x; synfer no slower than diffusers).
Writes benchmarks/results/generation_cost.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _common import machine_info, write_result

from synfer.annotate.au.distilled import DistilledAUEstimator
from synfer.annotate.prompts import enrich_prompt
from synfer.core.provenance import files_sha256
from synfer.generator.guidance import SemanticGuidance
from synfer.generator.pipeline import load_generator
from synfer.models.classifiers import DEFAULT_CLASSIFIER, ExpressionClassifier
from synfer.schema import FERPLUS8, AUSet
from synfer.synthesize.generate import plan_faces


def stock_pipeline(pipe):
    """diffusers' StableDiffusionPipeline on synfer's components (no text encoder: embeddings are passed in)."""
    from diffusers import StableDiffusionPipeline

    stock = StableDiffusionPipeline(vae=pipe.vae, text_encoder=None, tokenizer=None, unet=pipe.unet,
                                    scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None,
                                    requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    return stock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default="bundled")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--scale", type=float, default=0.05, help="semantic guidance lambda")
    ap.add_argument("--window", type=float, nargs=2, default=(0.6, 1.0))
    ap.add_argument("--variants", default="synfer,diffusers,semantic,semantic_au",
                    help="comma-separated subset to time (synfer is always included: the reference)")
    ap.add_argument("--note", default=None, help="a note on the machine (e.g. shared with a training job)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "generation_cost.json")
    args = ap.parse_args()

    pipe, folder = load_generator(args.pipeline, args.device)
    device = pipe.device
    au_names = tuple(pipe.au_adapter.au_names)
    exprs = list(FERPLUS8.names)
    plan = plan_faces({e: args.batch // len(exprs) for e in exprs}, au_names, "auto", 0, pipeline_dir=folder)
    prompts = [enrich_prompt(f.coarse, f.expression, dict(zip(au_names, f.aus, strict=True)), seed=f.seed)
               for f in plan]
    aus = torch.tensor([f.aus for f in plan])
    targets = torch.tensor([exprs.index(f.expression) for f in plan])
    defaults = pipe.generation_defaults()
    steps, w_t, w_a = defaults["num_inference_steps"], defaults["guidance_scale_text"], defaults["guidance_scale_au"]
    if w_t != w_a:
        raise SystemExit(f"the stock comparison needs equal text and AU scales; this pipeline's are {w_t}, {w_a}")
    latents = torch.randn(len(plan), pipe.unet.config.in_channels, pipe.unet.config.sample_size,
                          pipe.unet.config.sample_size, generator=torch.Generator().manual_seed(0)).to(device)
    classifier = ExpressionClassifier.from_pretrained(DEFAULT_CLASSIFIER).to(device)
    au_est = DistilledAUEstimator.from_pretrained(None, au_set=AUSet(au_names)).to(device)
    stock = stock_pipeline(pipe)

    def run_synfer(callback=None):
        kw = {"callback_on_step_end": callback, "callback_on_step_end_tensor_inputs": callback.tensor_inputs} \
            if callback is not None else {}
        return pipe(prompts, aus=aus, latents=latents.clone(), output_type="pt", **kw).images

    def run_stock():
        with torch.no_grad():
            text, empty = pipe.encode_prompt(prompts, device)
            tokens, null = pipe.encode_aus(aus, len(prompts), device)
            with pipe.au_adapter.applied_to(pipe.unet):
                return stock(prompt_embeds=torch.cat([text, tokens], 1), negative_prompt_embeds=torch.cat([empty, null], 1),
                             num_inference_steps=steps, guidance_scale=w_t, latents=latents.clone(),
                             output_type="pt").images

    variants = {
        "synfer": run_synfer,
        "diffusers": run_stock,
        "semantic": lambda: run_synfer(SemanticGuidance(classifier, targets, args.scale, tuple(args.window))),
        "semantic_au": lambda: run_synfer(SemanticGuidance(classifier, targets, args.scale, tuple(args.window),
                                                           au_est, aus, 1.0)),
    }
    chosen = {"synfer", *args.variants.split(",")}
    unknown = chosen - set(variants)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {sorted(variants)}")
    variants = {k: v for k, v in variants.items() if k in chosen}
    images = {name: fn() for name, fn in variants.items()}  # warm-up (and the outputs compared below)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    best = {k: min(v) for k, v in seconds.items()}  # the least disturbed run: the fairest on a shared machine
    guided = sum(1 for i in range(steps) if SemanticGuidance(classifier, targets, args.scale, tuple(args.window))
                 .guided_steps(steps).__contains__(i))
    result = {
        "command": "python benchmarks/generation_cost.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "note") and v is not None
            and not isinstance(v, (list, tuple))) + f" --window {args.window[0]} {args.window[1]}"
        + ("" if args.out.name == "generation_cost.json" else f" --out {args.out}"),
        "machine": machine_info(args.note),
        "device": str(device),
        "pipeline": str(args.pipeline), "generator_sha256": files_sha256(folder),
        "faces_per_batch": len(plan), "scheduler": type(pipe.scheduler).__name__, "steps": steps,
        "guidance_scales": [w_t, w_a], "semantic_guidance": {"scale": args.scale, "window": list(args.window),
                                                             "guided_steps": guided},
        "repeats": args.repeats,
        "seconds_per_batch": {k: round(v, 3) for k, v in med.items()},
        "faces_per_s": {k: round(len(plan) / v, 2) for k, v in med.items()},
        "relative_to_synfer": {k: round(v / med["synfer"], 3) for k, v in med.items()},
        # per repeat, each variant against synfer in the same round (load drifts between rounds, less within one)
        "paired_ratio_median": {k: round(statistics.median(x / y for x, y in zip(v, seconds["synfer"], strict=True)), 3)
                                for k, v in seconds.items()},
        "min_seconds_per_batch": {k: round(v, 3) for k, v in best.items()},
        "relative_to_synfer_min": {k: round(v / best["synfer"], 3) for k, v in best.items()},
        "synfer_vs_diffusers_max_abs_pixel_difference": float((images["synfer"] - images["diffusers"]).abs().max())
        if "diffusers" in images else None,
        "all_seconds": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
