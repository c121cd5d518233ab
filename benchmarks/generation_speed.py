"""Benchmark: faces/s of synfer's sampling settings against a stock diffusers pipeline, each with its quality.

    python benchmarks/generation_speed.py PREPARED [--per-class 200] [--seed 1] [--batch 64] [--rounds 5]
        [--settings default,previous,...] [--setting NAME=key:value,...] [--skip-quality] [--skip-speed]

PREPARED: FER+ after ``synfer prepare`` (per-face target AUs are drawn from its train split; the class-mean targets
are the bundled model's ``au_targets.json``).

Speed (one batch of ``--batch`` faces, 8 expressions, the same prompts, AUs and seeds for every setting): the
settings and the baseline are timed in interleaved rounds, so that load on the machine hits them alike; the figure
is the median over rounds of each round's ratio baseline seconds / setting seconds (faces/s are medians too).
The **baseline** is what a diffusers user would run on the same parts: diffusers' ``StableDiffusionPipeline``
built from the bundled VAE, UNet (no AU adapter: text only) and scheduler, fed synfer's text embeddings
(``prompt_embeds``: the prompts are encoded by the same text encoder, in fp32, inside the timed call), text-only
classifier-free guidance at the generator's text scale (two UNet rows), fp32, 10 steps of the generator's
scheduler (DPM-Solver++).

Quality of each setting (``--per-class`` faces per expression, face i seeded with seed + i in every setting):
the independent judge's (``--judge``, never a guidance model) recognition of the target expression at the
class-mean AU targets (``synfer generate``'s default) and at per-face AU targets drawn from real faces, and the
MediaPipe AU r of the per-face run (Pearson per AU over the faces MediaPipe sees, mean over the 21 AUs that vary).

A setting is ``key:value`` pairs: ``text`` and ``au`` (guidance scales; equal = two rows, 1 and 1 = the
conditional row alone), ``steps``, ``precision`` (fp32, bf16, auto), ``interval`` (guidance interval ``lo-hi``),
``compile`` (1 = ``SynferPipeline.compile_denoiser``; its one-off cost is reported), ``pipeline`` (a folder or
bundled name, e.g. the few-step student), ``adapter_scale`` (the AU adapter's attention scale, 1 as trained).
Unset keys take the pipeline's saved defaults.
Writes benchmarks/results/generation_speed.json (``--out`` for other runs); with ``--skip-speed`` the speed section of
an existing result file is kept (its command as ``speed_command``), so quality can be judged again apart. A
setting's speed does not depend on the AU adapter's scale (the same arithmetic), only its quality does.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import machine_info, write_result
from generator_quality import conditions, measure_aus
from vae_au_ceiling import DEFAULT_AU_MODEL

from synfer.annotate.au.distill import au_agreement
from synfer.classifiers.evaluate import predict
from synfer.core.images import save_grid
from synfer.generator.pipeline import load_pipeline
from synfer.models.classifiers import ExpressionClassifier

JUDGE = "ferplus-vgg13s-judge"
#: The baseline's sampling steps (the acceptance's fixed reference: 10 DPM-Solver++ steps).
BASELINE_STEPS = 10
#: Named settings (``--settings``): the shipped default, the previous default and each lever alone.
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "default-8steps": {"steps": 8},  # one step more than the saved default
    "default-adapter1": {"adapter_scale": 1.0},  # the AU adapter at its trained scale
    "previous-default": {"text": 4, "au": 6, "precision": "fp32", "steps": 10, "adapter_scale": 1.0},  # 3 rows
    "3rows-bf16": {"text": 4, "au": 6, "precision": "bf16", "steps": 10, "adapter_scale": 1.0},
    "default-fp32": {"precision": "fp32"},
    "default-compiled": {"compile": 1},
    "student-4steps": {"pipeline": "ferplus-mini-lcm", "steps": 4},
    "student-2steps": {"pipeline": "ferplus-mini-lcm", "steps": 2},
}


def parse_setting(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=key:value,key:value`` -> (NAME, {key: value})."""
    name, _, body = text.partition("=")
    opts: dict[str, Any] = {}
    for part in filter(None, body.split(",")):
        key, _, value = part.partition(":")
        opts[key] = value if key in ("precision", "pipeline", "interval") else float(value)
    return name, opts


class Setting:
    """One sampling setting: its pipeline (loaded once; a compiled one is a copy) and its call arguments."""

    def __init__(self, name: str, opts: dict[str, Any], pipes: dict[str, Any]) -> None:
        self.name, self.opts = name, dict(opts)
        key = str(opts.get("pipeline", "bundled"))
        if key not in pipes:
            pipes[key] = load_pipeline(key)
            pipes[key].set_progress_bar_config(disable=True)
        self.pipe = pipes[key]
        self.compile_s = None
        if opts.get("compile"):
            self.pipe = copy.deepcopy(self.pipe)
            self.pipe.compile_denoiser()
        d = self.pipe.generation_defaults()
        interval = opts.get("interval")
        self.kwargs = {"num_inference_steps": int(opts.get("steps", d["num_inference_steps"])),
                       "guidance_scale_text": float(opts.get("text", d["guidance_scale_text"])),
                       "guidance_scale_au": float(opts.get("au", d["guidance_scale_au"])),
                       "au_adapter_scale": float(opts.get("adapter_scale", d["au_adapter_scale"])),
                       "precision": opts.get("precision", "auto"),
                       "guidance_interval": None if interval is None else tuple(map(float, interval.split("-")))}
        if self.pipe.config.get("default_guidance_interval") is not None and interval is None:
            self.kwargs["guidance_interval"] = tuple(self.pipe.config.default_guidance_interval)

    def describe(self) -> dict[str, Any]:
        return {"options": self.opts, "call": {k: v for k, v in self.kwargs.items()},
                "scheduler": type(self.pipe.scheduler).__name__}

    def __call__(self, prompts: list[str], aus: np.ndarray | None, seeds: list[int]) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        a = None if aus is None else torch.from_numpy(np.ascontiguousarray(aus))
        return self.pipe(prompts, aus=a, generator=gens, output_type="pt", **self.kwargs).images.cpu()


def stock_baseline(pipe: Any) -> Any:
    """``run(prompts, seeds)``: diffusers' StableDiffusionPipeline on the bundled parts, text CFG, fp32 (module docs)."""
    from diffusers import StableDiffusionPipeline

    stock = StableDiffusionPipeline(vae=pipe.vae, text_encoder=None, tokenizer=None, unet=pipe.unet,
                                    scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None,
                                    requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    d = pipe.generation_defaults()
    device = pipe.device

    def run(prompts: list[str], seeds: list[int]) -> torch.Tensor:
        with torch.no_grad():
            embeds = pipe.text_encoder.encode(prompts, device)
            empty = pipe.text_encoder.empty_embedding(len(prompts), device)
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return stock(prompt_embeds=embeds, negative_prompt_embeds=empty, num_inference_steps=BASELINE_STEPS,
                     guidance_scale=d["guidance_scale_text"], generator=gens, output_type="pt").images.cpu()

    return run


def time_settings(settings: list[Setting], baseline: Any, prompts: list[str], aus: np.ndarray, seeds: list[int],
                  rounds: int) -> dict[str, Any]:
    """Interleaved rounds (after one warm-up call each); per setting: median faces/s and the median per-round
    speed ratio against the baseline."""
    runs = {"baseline": lambda: baseline(prompts, seeds)}
    for s in settings:
        runs[s.name] = lambda s=s: s(prompts, aus, seeds)
    for s in settings:  # warm-up; a compiled setting pays its compilation here
        t0 = time.perf_counter()
        s(prompts, aus, seeds)
        if s.opts.get("compile"):
            s.compile_s = time.perf_counter() - t0
    baseline(prompts, seeds)
    secs: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            secs[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {len(prompts) / v[-1]:.1f}" for k, v in secs.items()),
              flush=True)
    out = {}
    for name, v in secs.items():
        ratios = [b / x for b, x in zip(secs["baseline"], v, strict=True)]
        out[name] = {"faces_per_s": round(len(prompts) / statistics.median(v), 2),
                     "speedup_vs_baseline": round(statistics.median(ratios), 3),
                     "speedup_range": [round(min(ratios), 3), round(max(ratios), 3)],
                     "seconds": [round(x, 3) for x in v]}
    for s in settings:
        if s.compile_s is not None:
            out[s.name]["compile_and_first_call_s"] = round(s.compile_s, 1)
    return out


def quality(setting: Setting, judge: Any, estimator: Any, data: dict[str, Any], batch: int, seed: int,
            grid_dir: Path) -> dict[str, Any]:
    """Judge accuracy at class-mean and per-face targets, and MediaPipe AU r at per-face targets."""
    names = list(judge.label_names)
    target_idx = np.array([names.index(e) for e in data["exprs"]])
    out: dict[str, Any] = {}
    for run, aus in (("class_mean", data["class_mean"]), ("per_face", data["targets"])):
        images = torch.cat([setting(data["prompts"][s:s + batch], aus[s:s + batch],
                                    list(range(seed + s, seed + min(s + batch, len(aus)))))
                            for s in range(0, len(aus), batch)])
        pred = predict(judge, _as_split(images), torch.device("cpu")).argmax(-1)
        per_class = {c: round(float((pred[target_idx == k] == k).mean()), 4) for k, c in enumerate(names)}
        out[f"expression_accuracy_{run}"] = round(float((pred == target_idx).mean()), 4)
        out[f"per_class_{run}"] = per_class
        if run == "per_face":
            measured, presence = measure_aus(estimator, images)
            seen = presence >= 0.5
            agree = au_agreement(measured[seen], aus[seen], tuple(data["au_names"]))
            out["au_mean_r"] = round(agree["mean_r"], 4)
            out["faces_seen_by_mediapipe"] = int(seen.sum())
        grid = torch.cat([images[target_idx == k][:8] for k in range(len(names))])
        save_grid(grid, grid_dir / f"{_slug(setting.name)}-{run}.png", nrow=8)
    print(setting.name, {k: v for k, v in out.items() if not k.startswith("per_class")}, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prepared", type=Path)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--settings", default=",".join(SETTINGS), help="named settings, comma-separated")
    ap.add_argument("--setting", action="append", default=[], help="NAME=key:value,... (repeatable)")
    ap.add_argument("--judge", default=JUDGE)
    ap.add_argument("--au-model", type=Path, default=DEFAULT_AU_MODEL)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--note", default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "generation_speed.json")
    args = ap.parse_args()

    from synfer.annotate.au import create_estimator

    chosen = {n: SETTINGS[n] for n in filter(None, args.settings.split(","))}
    chosen.update(dict(parse_setting(s) for s in args.setting))
    pipes: dict[str, Any] = {}
    settings = [Setting(name, opts, pipes) for name, opts in chosen.items()]
    base = load_pipeline("bundled")
    exprs, prompts, targets, au_names, class_mean = conditions(args.prepared, args.per_class, args.seed)
    if list(base.au_adapter.au_names) != au_names:
        raise SystemExit(f"{args.prepared}'s AU order differs from the bundled adapter's")
    result: dict[str, Any] = {
        "benchmark": "generation_speed", "prepared": str(args.prepared), "per_class": args.per_class,
        "seed": args.seed, "batch": args.batch, "judge": args.judge,
        "settings": {s.name: s.describe() for s in settings}, "torch_threads": torch.get_num_threads(),
        "machine": machine_info(args.note),
        "command": "python benchmarks/generation_speed.py " + " ".join(_argv()),
    }
    if args.skip_speed and args.out.is_file():  # keep the speed section of an earlier run of the same settings
        earlier = json.loads(args.out.read_text())
        result.update({k: earlier[k] for k in ("speed", "baseline") if k in earlier})
        if "speed" in earlier:
            result["speed_command"] = earlier.get("speed_command", earlier["command"])
    if not args.skip_speed:
        # one batch: batch / 8 faces of each class, spread over the plan
        per = max(1, args.batch // 8)
        rows = np.concatenate([np.flatnonzero(np.array(exprs) == c)[:per] for c in dict.fromkeys(exprs)])
        seeds = [args.seed + int(i) for i in rows]
        result["speed"] = time_settings(settings, stock_baseline(base), [prompts[i] for i in rows],
                                        targets[rows], seeds, args.rounds)
        result["baseline"] = {"pipeline": "diffusers StableDiffusionPipeline", "unet_rows": 2, "precision": "fp32",
                              "num_inference_steps": BASELINE_STEPS,
                              "guidance_scale": base.generation_defaults()["guidance_scale_text"],
                              "scheduler": type(base.scheduler).__name__}
        write_result(args.out, result)
    if not args.skip_quality:
        judge = ExpressionClassifier.from_pretrained(args.judge)
        estimator = create_estimator("mediapipe", args.au_model)
        data = {"exprs": exprs, "prompts": prompts, "targets": targets, "class_mean": class_mean,
                "au_names": au_names}
        grid_dir = args.out.parent / args.out.stem
        result["quality"] = {s.name: quality(s, judge, estimator, data, args.batch, args.seed, grid_dir)
                             for s in settings}
        write_result(args.out, result)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _argv() -> list[str]:
    import shlex
    import sys

    return [shlex.quote(a) for a in sys.argv[1:]]


def _as_split(images: torch.Tensor):
    from types import SimpleNamespace

    return SimpleNamespace(images=(images * 255).round().clamp(0, 255).to(torch.uint8))


if __name__ == "__main__":
    main()
