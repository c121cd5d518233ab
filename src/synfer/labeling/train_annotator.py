"""``synfer train-annotator``: train FERAnno (or its linear-probe ablation) on real labelled faces.

The generator stays frozen, so each face's UNet features are read once (:class:`FERAnnotator.read`; mirrored faces
too with ``flip``) and kept in memory in fp16; the head then trains for many epochs at the cost of a small network.
Soft labels (FER+ vote distributions) train with soft cross-entropy. Each epoch the head is scored on the validation
split (accuracy on the hard labels) and the best epoch's head is exported::

    OUT/config.json, OUT/model.safetensors   the head (FERAnnoHead.from_pretrained / synfer label)
    OUT/metrics.jsonl                        train loss, val accuracy and macro-F1 per epoch
    OUT/train_config.json                    options, data sizes, the generator and its hash

Reading the features is the long part (about 60-80 faces/s for the mini generator on 2 CPU cores); with
``--feature-cache DIR`` they are stored there (safetensors, keyed by the generator's hash, the faces and every
reading option) and reused by later runs: the probe ablation, other head sizes or seeds. The head trains with the
shared training loop (resumable with ``--resume``); a killed run leaves no partial cache entry.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.metrics import classification_metrics
from ..core.options import RunOptions, Schedule
from ..core.splits import index_loader, load_split
from ..core.train_state import cached_tensors
from ..core.training import Trainer, start_run
from ..models.feranno import FERAnnoConfig, FERAnnoHead, read_weights_sha256
from .annotators import FERAnnotator


def read_features(annotator: FERAnnotator, images: torch.Tensor, batch_size: int, desc: str,
                  flip: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """uint8 faces (N, C, H, W) -> (feature maps, attention maps) over the whole set, fp16 on the CPU (with
    ``flip`` the mirrored faces follow the originals: 2N rows)."""
    feats: list[list[torch.Tensor]] = []
    attns: list[list[torch.Tensor]] = []
    device = annotator.pipe.device
    sets = [images, images.flip(-1)] if flip else [images]
    with tqdm(total=sum(len(s) for s in sets), desc=desc, unit="face") as bar:
        for s in sets:
            for chunk in s.split(batch_size):
                f, a = annotator.read(chunk.to(device).float() / 255)
                feats.append([x.half().cpu() for x in f])
                attns.append([x.half().cpu() for x in a])
                bar.update(len(chunk))
    return [torch.cat(col) for col in zip(*feats, strict=True)], [torch.cat(col) for col in zip(*attns, strict=True)]


def _cache_key(generator_sha256: str, ids: list[str], options: dict) -> str:
    """Hash of everything the features depend on: the generator, the faces (ids, in order) and the reading options."""
    h = hashlib.sha256(json.dumps({"generator": generator_sha256, "options": options}, sort_keys=True).encode())
    for i in ids:
        h.update(i.encode() + b"\0")
    return h.hexdigest()[:24]


def cached_features(cache: Path | None, key: str, compute) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``compute()`` -> (feature maps, attention maps), stored under ``cache/key.safetensors`` and reused."""
    def as_dict() -> dict[str, torch.Tensor]:
        f, a = compute()
        return {**{f"f{i}": x for i, x in enumerate(f)}, **{f"a{i}": x for i, x in enumerate(a)}}

    t = cached_tensors(cache, key, as_dict)
    nf = sum(1 for k in t if k.startswith("f"))
    na = sum(1 for k in t if k.startswith("a"))
    return [t[f"f{i}"] for i in range(nf)], [t[f"a{i}"] for i in range(na)]


def train_annotator(
    data: list[Path],
    out: Path,
    pipeline: str = "bundled",
    kind: str = "feranno",
    split: str = "train",
    val: Path | None = None,
    val_split: str = "val",
    prompt: str = "a photo of a face",
    timestep: int = 1,
    attention_tokens: int = 8,
    grid: int = 6,
    dim: int = 96,
    heads: int = 4,
    flip: bool = True,
    weight_decay: float = 0.05,
    read_batch_size: int = 64,
    max_cache_gb: float = 8.0,
    feature_cache: Path | None = None,
    schedule: Schedule = Schedule(20, 128, 1e-3),
    run: RunOptions = RunOptions(),
) -> Path:
    """Train a FERAnno head on a generator's frozen UNet features.

    Args:
        data: labelled dataset folders (soft labels used where present), in one expression order.
        out: the output folder (the head).
        pipeline: the generator whose UNet is read (folder or bundled name); recorded with its hash.
        kind: ``feranno`` (feature + attention encoders, bidirectional cross-attention fusion, linear head) or
            ``probe`` (a linear layer on the pooled feature maps: the ablation).
        split, val, val_split: trained on ``split`` of ``data``; scored on ``val_split`` of ``val`` (default the
            first data folder).
        prompt, timestep: the class-agnostic prompt and noise level of the single UNet pass.
        attention_tokens, grid, dim, heads: what is read and the head's size (see ``FERAnnoConfig``). The defaults
            suit the mini model on CPU (0.2-0.4 s per batch of 128); a Stable Diffusion UNet on a GPU takes
            grid 16, dim 256.
        flip: also read mirrored training faces (twice the features; augmentation for free at training time).
        schedule: the optimisation schedule (plain flags work: --epochs, --batch-size, --lr).
        weight_decay: AdamW, warm-up then cosine decay.
        read_batch_size: faces per UNet pass while reading features.
        max_cache_gb: refuse (with the fix) if the features would take more memory than this.
        run: seed, limit, precision, resume, overwrite, report_to (plain flags work: --seed 1, --resume).
        feature_cache: a folder to keep the read features in and reuse them from (about 58 kB per face and view
            for the mini generator; keyed by generator hash, faces and reading options).

    Returns:
        ``out``.
    """
    from ..generator.pipeline import load_generator

    out = Path(out)
    if kind not in ("feranno", "probe"):
        raise ValueError(f"kind must be feranno or probe; got {kind!r}.")
    accel, resume = start_run(out, run, schedule)
    pipe, folder = load_generator(pipeline, accel.device)
    annotator = FERAnnotator(pipe, None, prompt, timestep, attention_tokens, run.seed)
    size = (pipe.vae.config.in_channels, pipe.vae.config.sample_size, pipe.vae.config.sample_size)
    parts = [load_split(p, split, input_size=size, limit=run.limit) for p in data]
    names = parts[0].names
    for p in parts[1:]:
        from ..schema import check_same_order

        check_same_order("expression", list(names), list(p.names), str(data[0]), p.name)
    images = torch.cat([p.images for p in parts])
    probs = torch.cat([p.probs for p in parts])
    val_data = load_split(val or data[0], val_split, expressions=names, input_size=size, limit=run.limit)

    # 1. read the UNet once per face (checking the memory first on a small batch)
    f1, a1 = annotator.read(images[:2].to(pipe.device).float() / 255)
    per_face = 2 * (sum(x[0].numel() for x in f1) + sum(x[0].numel() for x in a1))
    need = per_face * (len(images) * (2 if flip else 1) + len(val_data.images)) / 2**30
    if need > max_cache_gb:
        raise ValueError(f"The UNet features of {len(images)} faces{' (x2 with flip)' if flip else ''} would take "
                         f"{need:.1f} GB; pass --limit, --no-flip or raise --max-cache-gb (now {max_cache_gb}).")
    t0 = time.perf_counter()
    generator_sha = read_weights_sha256(folder)  # the AU adapter is not read: retraining it keeps this head
    # the noise draw is per batch position, so the batch size is part of what the features depend on
    reading = {"prompt": prompt, "timestep": timestep, "attention_tokens": attention_tokens, "seed": run.seed,
               "size": list(size), "read_batch_size": read_batch_size}
    train_ids = [f"{p.name}/{i}" for p in parts for i in p.ids]
    train_f, train_a = cached_features(
        feature_cache, _cache_key(generator_sha, train_ids, {**reading, "flip": flip}),
        lambda: read_features(annotator, images, read_batch_size, "reading train faces", flip))
    val_f, val_a = cached_features(
        feature_cache, _cache_key(generator_sha, [f"{val_data.name}/{i}" for i in val_data.ids], reading),
        lambda: read_features(annotator, val_data.images, read_batch_size, "reading val faces"))
    read_s = time.perf_counter() - t0
    targets = torch.cat([probs, probs]) if flip else probs

    # 2. the head, trained on the features in memory
    config = FERAnnoConfig(label_names=list(names), feature_channels=[x.shape[1] for x in f1],
                           attention_layers=len(a1), kind=kind, attention_tokens=attention_tokens, grid=grid, dim=dim,
                           heads=heads, generator=str(pipeline), generator_sha256=generator_sha,
                           prompt=prompt, timestep=timestep)
    head = FERAnnoHead(config).to(accel.device)
    loader = accel.prepare(index_loader(len(targets), schedule.batch_size, run.seed,
                                        lambda idx: (torch.tensor(idx),)))
    options = {"data": [str(Path(p).resolve()) for p in data], "pipeline": str(pipeline), "kind": kind,
               "split": split, "val": str(val or data[0]), "val_split": val_split, **reading, "grid": grid, "dim": dim,
               "heads": heads, "flip": flip, **vars(schedule), "weight_decay": weight_decay, "limit": run.limit,
               "generator_sha256": generator_sha}
    trainer = Trainer(accel, out, {"head": head}, schedule.epochs, len(loader), schedule.lr,
                      weight_decay=weight_decay,
                      warmup_steps=len(loader), max_grad_norm=0.0, fingerprint=options)
    trainer.begin(resume, "train-annotator", {**options, "feature_cache": str(feature_cache) if feature_cache else None},
                  data={"train_faces": len(images), "val_faces": len(val_data.labels), "feature_gb": round(need, 2),
                        "read_seconds": round(read_s, 1),
                        "head_parameters": sum(p.numel() for p in head.parameters())})

    def logits_of(fs: list[torch.Tensor], as_: list[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        return head([x[idx].to(accel.device) for x in fs], [x[idx].to(accel.device) for x in as_])

    def loss_fn(batch: tuple[torch.Tensor]) -> torch.Tensor:
        idx = batch[0].cpu()
        return F.cross_entropy(logits_of(train_f, train_a, idx).float(), targets[idx].to(accel.device))

    def end_epoch(epoch: int) -> dict[str, Any]:
        with torch.no_grad():
            pred = torch.cat([logits_of(val_f, val_a, idx).argmax(-1).cpu()
                              for idx in torch.arange(len(val_data.labels)).split(512)])
        m = classification_metrics(val_data.labels.numpy(), pred.numpy(), names)
        if m["accuracy"] > trainer.best.get("val_accuracy", -1.0):
            trainer.best = {"val_accuracy": m["accuracy"], "val_macro_f1": m["macro_f1"], "chosen_epoch": epoch + 1}
            head.config.extra = {"train_faces": len(images), "val_faces": len(val_data.labels), **trainer.best,
                                 "data": [str(p) for p in data], "seed": run.seed}
            copy.deepcopy(head).cpu().save_pretrained(out)
        return {"val_accuracy": m["accuracy"], "val_macro_f1": m["macro_f1"]}

    trainer.fit(loader, loss_fn, end_epoch)
    return out
