"""Copy a trained SynferPipeline into the package as a bundled generator (maintainers' step, not a user verb).

    python tools/bundle_generator.py RUN/pipeline PREPARED [--name ferplus-mini] [--scheduler dpm] [--steps 10]
        [--text-scale 3.0] [--au-scale 3.0] [--adapter-scale 1.0]

Sets the sampler the model was validated with (DPM-Solver++ or DDIM, trailing timesteps; ``keep`` leaves the
pipeline's own, e.g. a distilled student's LCM scheduler) and its default steps, guidance scales and AU adapter
scale (saved in model_index.json, used when a call leaves them out), writes the per-class mean AU vectors of
PREPARED's train split as au_targets.json, and swaps the folder into src/synfer/assets/generators/NAME. The model
card (README.md in that folder) is kept if present.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from synfer.core.assets import KINDS, assets_dir
from synfer.core.training import atomic_save_dir
from synfer.generator.au_targets import write_au_targets
from synfer.generator.pipeline import SynferPipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pipeline", type=Path)
    ap.add_argument("prepared", type=Path)
    ap.add_argument("--name", default="ferplus-mini")
    ap.add_argument("--scheduler", choices=["dpm", "ddim", "keep"], default="dpm")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--text-scale", type=float, default=3.0)
    ap.add_argument("--au-scale", type=float, default=3.0)
    ap.add_argument("--adapter-scale", type=float, default=1.0)
    args = ap.parse_args()

    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    pipe = SynferPipeline.from_pretrained(args.pipeline)
    if args.scheduler == "dpm":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            pipe.scheduler.config, algorithm_type="dpmsolver++", timestep_spacing="trailing", final_sigmas_type="zero")
    elif args.scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    pipe.set_generation_defaults(args.steps, args.text_scale, args.au_scale, args.adapter_scale)
    dest = assets_dir() / KINDS["generator"].folder / args.name
    card = dest / "README.md"
    card_text = card.read_text() if card.is_file() else None

    def write(d: Path) -> None:
        pipe.save_pretrained(d)
        for cfg in [*d.rglob("config.json"), d / "model_index.json"]:  # diffusers records the maintainer's paths
            data = json.loads(cfg.read_text())
            if data.pop("_name_or_path", None) is not None:
                cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        write_au_targets(args.prepared, d)
        if card_text is not None:
            (d / "README.md").write_text(card_text)

    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_dir(dest, write)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) / 1e6
    print(f"bundled {args.pipeline} as {dest} ({size:.1f} MB); defaults {pipe.generation_defaults()}")
    shutil.rmtree(dest / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    main()
