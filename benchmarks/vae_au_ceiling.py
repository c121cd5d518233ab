"""Benchmark: how much of a face's AUs survive an autoencoder, as MediaPipe measures them (an AU-control ceiling).

    python benchmarks/vae_au_ceiling.py VAE PREPARED [--faces 1600] [--out results/vae_au_ceiling-NAME.json]

VAE: an ``AutoencoderKL`` folder (``OUT/vae`` of ``synfer train-vae``), a SynferPipeline folder, or ``bundled``.
PREPARED: FER+ after ``synfer prepare``; its val faces with AUs are used, their stored MediaPipe AUs the targets.

A generator that decodes through a VAE cannot place AUs more precisely than the VAE reconstructs them, so the AU r
of the VAE's reconstructions of real faces bounds (in practice) the generator's AU control (the generator issue's
bar: mean r >= 0.6). Reported next to it: the estimator's own test-retest on horizontally flipped copies, and the
reconstruction PSNR. r is Pearson per AU over the faces MediaPipe still sees as faces, mean over the AUs whose
targets vary (std >= 0.02).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import machine_info, write_result

from synfer.annotate.au.distill import au_agreement
from synfer.core.dataset import DatasetFolder

DEFAULT_AU_MODEL = Path("../shared/data/mediapipe_face_landmarker/face_landmarker.task")


def au_reference(vae: Any, prepared: Path, estimator: Any, n: int) -> dict[str, Any]:
    """MediaPipe on altered real val faces against their stored AUs, ``{variant: {au_mean_r, faces,
    faces_seen_by_mediapipe, au_r (per AU)}}``, and the reconstructions' PSNR (``reconstruction_psnr_db``, images
    in [0, 1])."""
    from synfer.generator.train_vae import reconstruct

    folder = DatasetFolder(prepared)
    recs = [r for r in folder.records("val") if r.aus is not None][:n]
    if not recs:
        raise SystemExit(f"{prepared}: no val record has AUs; run `synfer prepare` on it first.")
    u8 = np.stack([np.asarray(folder.load_image(r.image).convert("L")) for r in recs])  # (N, H, W)
    targets = np.stack([r.aus for r in recs]).astype(np.float32)  # (N, A)
    rec = reconstruct(vae, torch.from_numpy(u8)[:, None].to(vae.device), batch_size=256)  # (N, 1, H, W) in [-1, 1]
    rec01 = (rec[:, 0].float() + 1) / 2
    mse = torch.mean((rec01 - torch.from_numpy(u8).float() / 255) ** 2).item()
    variants = {"flipped real faces (estimator test-retest)": u8[:, :, ::-1].copy(),
                "VAE reconstructions of real faces": (rec01 * 255).round().to(torch.uint8).numpy()}
    out: dict[str, Any] = {"reconstruction_psnr_db": 10 * math.log10(1 / mse)}
    for name, arr in variants.items():
        res = estimator.estimate(arr)
        seen = res.face_presence >= 0.5
        agree = au_agreement(res.aus[seen], targets[seen], tuple(folder.au_names))
        out[name] = {"au_mean_r": agree["mean_r"], "faces": len(recs), "faces_seen_by_mediapipe": int(seen.sum())}
        print(name, out[name], flush=True)
        out[name]["au_r"] = {n: v["r"] for n, v in agree["per_au"].items()}
    return out


def load_vae(spec: str) -> Any:
    """An AutoencoderKL from a VAE folder, or the ``vae`` of a pipeline folder / bundled generator name."""
    from diffusers import AutoencoderKL

    path = Path(spec)
    if (path / "config.json").is_file() and not (path / "model_index.json").is_file():
        return AutoencoderKL.from_pretrained(path).eval()
    from synfer.generator.pipeline import load_pipeline

    return load_pipeline(spec).vae.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vae")
    ap.add_argument("prepared", type=Path)
    ap.add_argument("--faces", type=int, default=1600)
    ap.add_argument("--au-model", type=Path, default=DEFAULT_AU_MODEL)
    ap.add_argument("--note", default=None)
    ap.add_argument("--out", type=Path, default=None, help="default: results/vae_au_ceiling-<vae folder name>.json")
    args = ap.parse_args()

    from synfer.annotate.au import create_estimator

    vae = load_vae(args.vae)
    estimator = create_estimator("mediapipe", args.au_model)
    result = au_reference(vae, args.prepared, estimator, args.faces)
    name = Path(args.vae).parent.name if Path(args.vae).name == "vae" else Path(args.vae).name
    out = args.out or Path(__file__).parent / "results" / f"vae_au_ceiling-{name}.json"
    write_result(out, {"benchmark": "vae_au_ceiling", "vae": args.vae, "prepared": str(args.prepared),
                       "latent_shape": _latent_shape(vae), "results": result, "machine": machine_info(args.note)})


def _latent_shape(vae: Any) -> list[int]:
    c = vae.config
    side = c.sample_size // 2 ** (len(c.block_out_channels) - 1) if isinstance(c.sample_size, int) else None
    return [c.latent_channels, side, side]


if __name__ == "__main__":
    main()
