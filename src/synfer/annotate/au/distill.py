"""``synfer train-au-estimator``: distil an AU estimator (MediaPipe through synfer's table) into a small CNN.

The teacher's outputs are already in a prepared dataset folder (``synfer prepare``): ``aus`` per record (None
where the teacher saw no face) and ``meta.face_presence``. The student is a synfer backbone with one logit per
AU plus one for face presence, trained with binary cross-entropy to the teacher's intensities (the AU loss only
on records that have AUs), and selected on the validation split by the mean Pearson r over the AUs that vary.
Optionally it starts from a trained expression classifier's backbone (``--init-from ferplus-resnet-s``): the
same faces, and expression features are close to AU features, so it converges in a few epochs.

Run folder::

    OUT/config.json, model.safetensors   the exported estimator (best epoch on validation)
    OUT/train_config.json                arguments, versions, data sizes
    OUT/metrics.jsonl                    per epoch: losses, val mean r, per-AU r, images/s
    OUT/state/                           resume state of the last finished epoch
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...core.dataset import DatasetError, DatasetFolder
from ...core.options import RunOptions, Schedule
from ...core.runtime import resolve_precision
from ...core.splits import Split, index_loader, load_split
from ...core.training import Trainer, batch_draw, local_draws, start_run
from ...models.classifiers import ClassifierConfig, ExpressionClassifier
from .distilled import FACE_COLUMN, KIND

#: An AU "varies" on a split when the teacher's standard deviation there is at least this (AU09 from MediaPipe
#: stays near 0 on FER+: a correlation with noise says nothing).
VARYING_STD = 0.02


def _au_split(path: Path, split: str, size: tuple[int, int, int] | None, limit: int | None) -> Split:
    """A prepared folder's split with its teacher AUs and face presence (every record)."""
    data = load_split(path, split, input_size=size, labelled=False, need_aus=True, limit=limit)
    if not len(data) or not bool(data.has_aus.any()):
        raise DatasetError(f"{path}: no record of split {split!r} has AU values; run `synfer prepare {path} OUT` "
                           "first and train on OUT.")
    return data


def pearson_per_column(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pearson r of each column of (N, A) predictions with (N, A) targets; NaN where either is constant."""
    p = pred - pred.mean(0)
    t = target - target.mean(0)
    den = np.sqrt((p ** 2).sum(0) * (t ** 2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (p * t).sum(0) / den, np.nan)


def au_agreement(pred: np.ndarray, target: np.ndarray, names: tuple[str, ...],
                 varying_std: float = VARYING_STD) -> dict[str, Any]:
    """Per-AU Pearson r, MAE and teacher std, and the mean r over the AUs whose teacher std >= ``varying_std``."""
    r = pearson_per_column(pred, target)
    std = target.std(0)
    mae = np.abs(pred - target).mean(0)
    varying = [i for i in range(len(names)) if std[i] >= varying_std and np.isfinite(r[i])]
    return {
        "mean_r": float(np.mean(r[varying])) if varying else float("nan"),
        "varying": [names[i] for i in varying],
        "per_au": {n: {"r": None if not np.isfinite(r[i]) else round(float(r[i]), 4),
                       "mae": round(float(mae[i]), 4), "teacher_std": round(float(std[i]), 4)}
                   for i, n in enumerate(names)},
        "n": int(len(pred)),
    }


def _flip_permutation(names: tuple[str, ...]) -> list[int]:
    """Column order after a horizontal flip: lateral columns swap sides (AU12_L <-> AU12_R)."""
    idx = {n: i for i, n in enumerate(names)}
    swap = {"_L": "_R", "_R": "_L"}
    return [idx.get(n[:-2] + swap[n[-2:]], i) if n[-2:] in swap else i for i, n in enumerate(names)]


def _augment(x: torch.Tensor, aus: torch.Tensor, perm: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip half the faces (swapping lateral AU columns) and jitter brightness/contrast a little.

    Only transforms under which the teacher's answer stays (nearly) the same: crops and rotations move the face
    in the teacher's padded input and change its output.
    """
    b = len(x)
    flip = batch_draw(torch.rand, b) < 0.5  # drawn for the global batch: the same per face on any process count
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    aus = torch.where(flip.view(-1, 1), aus[:, perm], aus)
    contrast = 1 + (batch_draw(lambda n: torch.rand(n, 1, 1, 1), b) - 0.5) * 0.3
    bright = (batch_draw(lambda n: torch.rand(n, 1, 1, 1), b) - 0.5) * 0.15
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + bright).clamp(0, 1), aus


@torch.no_grad()
def predict_aus(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 512
                ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, C, H, W) -> (AU intensities (N, A), face presence (N,)) from a network with A + 1 logits."""
    model.eval()
    device = next(model.parameters()).device
    out = [torch.sigmoid(model(chunk.to(device).float() / 255.0).float()).cpu() for chunk in images.split(batch_size)]
    p = torch.cat(out).numpy()
    return p[:, :-1], p[:, -1]


def train_au_estimator(
    data: Path,
    out: Path,
    architecture: str = "fer_resnet_s",
    model_kwargs: dict[str, Any] | None = None,
    init_from: str | None = None,
    train_split: str = "train",
    val_split: str = "val",
    weight_decay: float = 0.05,
    warmup_epochs: float = 0.5,
    face_weight: float = 0.5,
    schedule: Schedule = Schedule(12, 128, 2e-3),
    run: RunOptions = RunOptions(),
) -> Path:
    """Distil the AU estimator whose outputs a prepared dataset folder holds into a small CNN.

    Args:
        data: a folder written by ``synfer prepare`` (AUs + ``meta.face_presence`` per record).
        out: run folder (see module docs); its config.json + model.safetensors are the estimator.
        architecture: synfer backbone or timm model name (ignored with ``init_from``: the classifier's is used).
        model_kwargs: extra backbone arguments, e.g. {"stem_stride": 2}.
        init_from: start from this expression classifier's backbone (folder or bundled name); its head is
            replaced. None: random initialisation.
        train_split, val_split: splits to fit and to select on (the test split is never read here).
        schedule: the optimisation schedule (plain flags work: --epochs, --batch-size, --lr).
        weight_decay, warmup_epochs: AdamW with a cosine schedule after a linear warm-up.
        face_weight: weight of the face-presence loss next to the AU loss.
        run: seed, limit, precision, resume, overwrite, report_to (plain flags work: --seed 1, --resume).

    Returns:
        the run folder.
    """
    out = Path(out)
    init = ExpressionClassifier.from_pretrained(init_from) if init_from else None
    size = tuple(init.config.input_size) if init is not None else None
    train = _au_split(data, train_split, size, run.limit)
    val = _au_split(data, val_split, tuple(train.images.shape[1:]), run.limit)
    if len(train) < schedule.batch_size:
        raise DatasetError(f"{len(train)} training faces is less than one batch of {schedule.batch_size}.")
    accel, resume = start_run(out, run, schedule)
    model = _student(architecture, model_kwargs, init, train).to(accel.device)
    loader = accel.prepare(index_loader(len(train), schedule.batch_size, run.seed,
                                        lambda idx: (torch.tensor(idx),)))
    options = {"data": str(data), "architecture": model.config.architecture, "model_kwargs": model.config.model_kwargs,
               "init_from": init_from, "train_split": train_split, "val_split": val_split, **vars(schedule),
               "weight_decay": weight_decay, "warmup_epochs": warmup_epochs, "face_weight": face_weight,
               "precision": resolve_precision(run.precision, accel.device), "seed": run.seed, "limit": run.limit}
    steps = len(loader)
    trainer = Trainer(accel, out, {"model": model}, schedule.epochs, steps, schedule.lr,
                      weight_decay=weight_decay,
                      warmup_steps=max(1, int(warmup_epochs * steps)), max_grad_norm=0.0, decay_1d=False,
                      fingerprint=options)
    trainer.begin(resume, "train-au-estimator", options, data={
        "train": len(train), "train_with_aus": int(train.has_aus.sum()), "val": len(val),
        "val_with_aus": int(val.has_aus.sum())})
    perm, sums = _flip_permutation(train.au_names), {"au": 0.0, "face": 0.0, "batches": 0}

    def loss_fn(batch: tuple[torch.Tensor]) -> torch.Tensor:
        idx = batch[0].cpu()
        x, aus = _augment(train.images[idx].float() / 255.0, train.aus[idx], perm)
        has, face = train.has_aus[idx].to(accel.device), train.face[idx].to(accel.device)
        with local_draws():  # the student's dropout: this process's rows
            logits = model(x.to(accel.device)).float()
        au_loss = F.binary_cross_entropy_with_logits(logits[:, :-1], aus.to(accel.device), reduction="none").mean(1)
        au_loss = (au_loss * has).sum() / has.sum().clamp(min=1)
        face_loss = F.binary_cross_entropy_with_logits(logits[:, -1], face)
        sums.update(au=sums["au"] + au_loss.item(), face=sums["face"] + face_loss.item(), batches=sums["batches"] + 1)
        return au_loss + face_weight * face_loss

    def end_epoch(epoch: int) -> dict[str, Any]:
        n = max(1, sums["batches"])
        row = {"train_au_bce": sums["au"] / n, "train_face_bce": sums["face"] / n,
               **_select(trainer, model, val, data, val_split, init_from, run.seed, out)}
        sums.update(au=0.0, face=0.0, batches=0)
        return row

    trainer.fit(loader, loss_fn, end_epoch)
    best = trainer.best
    accel.print(f"best epoch {best['epoch']}: val mean r {best['val_mean_r']:.4f}; exported to {out}")
    return out


def _student(architecture: str, model_kwargs: dict[str, Any] | None, init: ExpressionClassifier | None,
             train: Split) -> ExpressionClassifier:
    """The network: A AU logits + face presence, random or from a classifier's backbone (its head replaced)."""
    names = train.au_names
    c, h, w = train.images.shape[1:]
    if init is not None:
        config = ClassifierConfig(architecture=init.config.architecture, label_names=[*names, FACE_COLUMN],
                                  input_size=(c, h, w), mean=init.config.mean, std=init.config.std,
                                  model_kwargs=dict(init.config.model_kwargs))
    else:
        config = ClassifierConfig(architecture=architecture, label_names=[*names, FACE_COLUMN], input_size=(c, h, w),
                                  mean=(0.5,) * c, std=(0.25,) * c, model_kwargs=dict(model_kwargs or {}))
    model = ExpressionClassifier(config)
    if init is not None:  # everything but the classification head
        own = model.backbone.state_dict()
        keep = {k: v for k, v in init.backbone.state_dict().items() if k in own and own[k].shape == v.shape}
        model.backbone.load_state_dict(keep, strict=False)
    return model


def _select(trainer: Trainer, model: ExpressionClassifier, val: Split, data: Path, val_split: str,
            init_from: str | None, seed: int, out: Path) -> dict[str, Any]:
    """Mean Pearson r on validation; the estimator exported when it beats every earlier epoch."""
    mask = val.has_aus.numpy()
    pred, face_pred = predict_aus(model, val.images)
    agree = au_agreement(pred[mask], val.aus.numpy()[mask], val.au_names)
    face_r = float(pearson_per_column(face_pred[:, None], val.face.numpy()[:, None])[0])
    if agree["mean_r"] > trainer.best.get("val_mean_r", -2.0):
        trainer.best = {"val_mean_r": agree["mean_r"], "val_face_r": face_r, "epoch": trainer.epoch + 1}
        model.config.extra = {"kind": KIND, "selected_on": f"{Path(data).name}:{val_split} mean Pearson r over "
                              "varying AUs", **trainer.best, "teacher": _teacher(data), "init_from": init_from,
                              "seed": seed, "au_scale": "0-1"}
        model.save_pretrained(out)
    return {"val_mean_r": agree["mean_r"], "val_face_r": face_r, "val_r": {n: v["r"] for n, v in agree["per_au"].items()}}


def _teacher(data: Path) -> dict[str, Any]:
    """The AU estimator that wrote the folder's AUs (from its provenance)."""
    for entry in reversed(DatasetFolder(data).header.provenance):
        if entry.get("stage") == "prepare":
            est = entry.get("config", {}).get("estimator", {})
            return {k: est.get(k) for k in ("estimator", "model_sha256", "pad_fraction") if k in est}
    return {}
