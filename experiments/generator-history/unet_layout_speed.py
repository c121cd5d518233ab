"""Benchmark: sampling speed of a candidate UNet layout against the bundled generator's, before training it.

    python experiments/generator-history/unet_layout_speed.py --attention-levels 2 3 [--block-out-channels 24 48 96 160] [--rounds 3]

Speed does not depend on the weights, so an untrained UNet of the candidate layout (with a fresh AU adapter) stands
in the bundled pipeline's place: same VAE, text encoder, scheduler, guidance (the pipeline's defaults, three UNet
rows), batch and prompts. Rounds alternate between the two UNets so that load on a shared machine hits both alike;
each round prints faces/s for the bundled UNet, the candidate at the default steps and at ``--fewer-steps``.
"""

from __future__ import annotations

import argparse
import time

import torch

from synfer.generator.pipeline import load_pipeline
from synfer.generator.train_unet import build_unet
from synfer.models.au_adapter import AUAdapter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--block-out-channels", type=int, nargs="+", default=[24, 48, 96, 160])
    ap.add_argument("--attention-levels", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fewer-steps", type=int, default=8)
    args = ap.parse_args()

    pipe = load_pipeline("bundled")
    pipe.set_progress_bar_config(disable=True)
    steps = pipe.generation_defaults()["num_inference_steps"]
    base = (pipe.unet, pipe.au_adapter)
    vae, unet_cfg = pipe.vae.config, pipe.unet.config
    torch.manual_seed(0)
    cand_unet = build_unet(unet_cfg.sample_size, vae.latent_channels, tuple(args.block_out_channels),
                           unet_cfg.layers_per_block, unet_cfg.attention_head_dim, unet_cfg.cross_attention_dim,
                           tuple(args.attention_levels)).eval()
    cand = (cand_unet, AUAdapter.for_unet(cand_unet, base[1].au_names))
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    print(f"UNet parameters: bundled {count(base[0]):.2f}M, candidate {count(cand_unet):.2f}M")
    prompts = ["Someone with a happy face."] * args.batch
    aus = torch.full((args.batch, len(base[1].au_names)), 0.2)

    def faces_per_s(unet_and_adapter: tuple, n_steps: int) -> float:
        pipe.unet = unet_and_adapter[0]
        pipe.set_au_adapter(unet_and_adapter[1])
        t0 = time.perf_counter()
        pipe(prompts, aus=aus, num_inference_steps=n_steps, generator=torch.Generator().manual_seed(0),
             output_type="pt")
        return args.batch / (time.perf_counter() - t0)

    for r in range(args.rounds):
        print(f"round {r + 1}: bundled {faces_per_s(base, steps):.1f} faces/s at {steps} steps, candidate "
              f"{faces_per_s(cand, steps):.1f} at {steps}, {faces_per_s(cand, args.fewer_steps):.1f} at "
              f"{args.fewer_steps}", flush=True)


if __name__ == "__main__":
    main()
