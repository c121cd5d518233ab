"""Copy a trained FERAnno head into the package as a bundled annotator, with its model card (maintainers' step).

    python tools/bundle_feranno.py RUN [--name ferplus-feranno-mini] [--bench benchmarks/results/feranno_ferplus.json]

RUN is a ``synfer train-annotator`` output for the bundled generator; BENCH is ``benchmarks/feranno_ferplus.py``'s
result for it (FERAnno, probe and classifier on the FER+ test), whose figures go into the card. The head's
``generator_sha256`` must match the bundled generator (else retrain it for that generator first).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file

from synfer.core.assets import KINDS, assets_dir
from synfer.models.feranno import read_weights_sha256


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--name", default="ferplus-feranno-mini")
    ap.add_argument("--generator", default="ferplus-mini", help="the bundled generator the head reads")
    ap.add_argument("--bench", type=Path, default=Path(__file__).parents[1] / "benchmarks" / "results"
                    / "feranno_ferplus.json")
    args = ap.parse_args()
    run = args.run
    cfg = json.loads((run / "config.json").read_text())
    sha = read_weights_sha256(assets_dir() / KINDS["generator"].folder / args.generator)
    if cfg["generator_sha256"] != sha:
        raise SystemExit(f"{run} was trained on generator weights {cfg['generator_sha256'][:12]}..., the bundled "
                         f"{args.generator} is {sha[:12]}...; retrain it with `synfer train-annotator`.")
    bench = json.loads(args.bench.read_text())
    tc = json.loads((run / "train_config.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    dest = assets_dir() / KINDS["annotator"].folder / args.name
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copyfile(run / f, dest / f".tmp-{f}")
        (dest / f".tmp-{f}").replace(dest / f)
    size = (dest / "model.safetensors").stat().st_size / 2**20
    unet_params = sum(t.numel() for f in (assets_dir() / KINDS["generator"].folder / args.generator / "unet").glob("*.safetensors")
                      for t in load_file(f).values())
    r = bench["results"]
    names = list(r["feranno"]["recall"])

    def cell(m: str, c: str) -> str:
        return f"{r[m]['recall'][c]:.1f}%" if m in r else "-"

    recall = "\n".join(f"| {c} | {cell('feranno', c)} | {cell('probe', c)} | {cell('classifier', c)} |" for c in names)
    data = tc.get("data", {})
    probe_row = (f"| linear probe on the same UNet features (ablation) | {r['probe']['accuracy']:.2f}% | "
                 f"{r['probe']['macro_f1']:.2f}% |\n" if "probe" in r else "")
    card = f"""# {args.name}: FERAnno for the bundled mini generator

**For research use only.** Trained on FER2013 images with FER+ labels, on the features of a generator trained on
FER2013 faces; it inherits their research-only terms. Do not use it to make decisions about people.

FERAnno (SynFER §4) labels faces by reading the generator's own UNet: the face is encoded by the generator's VAE,
noised to timestep {cfg['timestep']}, passed once through the frozen UNet under the prompt "{cfg['prompt']}"; the
up-block feature maps ({", ".join(str(c) for c in cfg['feature_channels'])} channels) and the cross-attention maps
of {cfg['attention_layers']} layers (first {cfg['attention_tokens']} tokens) go through two encoders (grid
{cfg['grid']}x{cfg['grid']}, width {cfg['dim']}), a bidirectional cross-attention fusion block and a linear head.
It only works with the generator whose VAE, UNet and text encoder it was trained on (`generator_sha256` in
`config.json`, checked on load; the AU adapter is not read, so retraining the adapter keeps this head valid): the
bundled `{args.generator}` as of this head. Use: `synfer label DATA OUT --annotators
ferplus-feranno-mini,ferplus-resnet-s`.

| | |
|---|---|
| head | {data.get('head_parameters', 0) / 1e6:.2f}M parameters, `config.json` + `model.safetensors` ({size:.1f} MB) |
| training | FER+ train, {data.get('train_faces')} faces and their mirror images (features read once: {data.get('read_seconds')} s), soft FER+ vote labels, AdamW lr {tc['config']['lr']}, {len(rows)} epochs, seed {cfg['extra']['seed']} |
| selection | epoch {cfg['extra']['chosen_epoch']} of {len(rows)}, by FER+ validation accuracy ({100 * cfg['extra']['val_accuracy']:.2f}%) |

## Results (FER+ official majority test, n = {r['feranno']['faces']})
`python benchmarks/feranno_ferplus.py --feranno ferplus-feranno-mini --probe RUN_PROBE` (each model chosen on val,
scored once on test):

| model | accuracy | macro-F1 |
|---|---|---|
| FERAnno (this head) | **{r['feranno']['accuracy']:.2f}%** | {r['feranno']['macro_f1']:.2f}% |
{probe_row}| bundled classifier `ferplus-resnet-s` (pixels, 2.8M parameters) | {r['classifier']['accuracy']:.2f}% | {r['classifier']['macro_f1']:.2f}% |

| class | FERAnno recall | probe recall | classifier recall |
|---|---|---|---|
{recall}

The SynFER paper's FERAnno, on Stable Diffusion's UNet, beats its best classifier by about one point. Ours reads
a {unet_params / 1e6:.1f}M-parameter UNet trained from scratch on a CPU, whose features carry much less about expression than
a classifier trained from pixels: it is behind the bundled classifier. It is still useful as a second,
differently-built voter (see `benchmarks/README.md`, voting), and it is retrained when the generator improves.

## Reproduce
```bash
synfer train-annotator runs/ferplus_ce RUN --val runs/ferplus --feature-cache runs/feature-cache
synfer train-annotator runs/ferplus_ce RUN_PROBE --val runs/ferplus --kind probe --feature-cache runs/feature-cache
python benchmarks/feranno_ferplus.py --feranno RUN --probe RUN_PROBE
python tools/bundle_feranno.py RUN      # this folder and card
```
"""
    tmp = dest / ".tmp-README.md"
    tmp.write_text(card)
    tmp.replace(dest / "README.md")
    print(f"bundled {run} as {dest}")


if __name__ == "__main__":
    main()
