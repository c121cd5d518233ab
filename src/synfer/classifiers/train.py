"""``synfer train-fer``: train an expression classifier on any mix of dataset folders.

Recipe: soft-label cross-entropy (FER+ vote distributions where the folder has them), SGD with Nesterov momentum
and a cosine schedule after a linear warm-up, optional EMA of the weights, torchvision v2 augmentation, model
selection on the validation split only. Runs on CPU, one GPU or several through accelerate (mixed precision on
GPU). The run folder::

    OUT/config.json, model.safetensors   the exported classifier: the best epoch on validation
    OUT/train_config.json                the resolved arguments, versions, data summary
    OUT/metrics.jsonl                    one line per epoch: loss, accuracies, macro-F1, lr, images/s
    OUT/state/                           resume state of the last finished epoch (safetensors + JSON)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..core.batching import IndexDataset
from ..core.dataset import DatasetError
from ..core.metrics import classification_metrics
from ..core.options import RunOptions, Schedule
from ..core.runtime import resolve_precision
from ..core.splits import MixSampler, Split, load_split
from ..core.training import Trainer, local_draws, start_run
from ..models.classifiers import ClassifierConfig, ExpressionClassifier
from .augment import train_transform
from .evaluate import predict


def _augment(batch: torch.Tensor, transform, group: int) -> torch.Tensor:
    """Apply a v2 transform to uint8 faces (B, C, H, W), ``group`` faces sharing one draw of its parameters."""
    return torch.cat([transform(chunk) for chunk in batch.split(group)])


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 256) -> None:
    """Recompute BatchNorm running statistics of ``model`` on uint8 faces (N, C, H, W), in place.

    An EMA of weights inherits an EMA of running statistics that belonged to other weights; while the learning
    rate is high the mismatch costs many points of accuracy (measured: 0.54 -> 0.75 val accuracy after 9 FER+
    epochs), so the averaged weights get their own statistics before they are judged.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    was_training = model.training
    model.train()
    with torch.random.fork_rng(devices=[]):  # dropout draws here must not shift the training RNG stream
        for chunk in images.split(batch_size):
            model(chunk.to(device).float() / 255.0)
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
    model.train(was_training)


def train_fer(
    train: list[Path],
    out: Path,
    architecture: str = "fer_resnet_s",
    model_kwargs: dict[str, Any] | None = None,
    train_split: str = "train",
    ratios: list[float] | None = None,
    counts: list[int] | None = None,
    epoch_size: int | None = None,
    balanced: bool = False,
    val: Path | None = None,
    val_split: str = "val",
    input_size: list[int] | None = None,
    labels: str = "soft",
    weight_decay: float = 5e-4,
    warmup_epochs: float = 1.0,
    label_smoothing: float = 0.0,
    ema_decay: float = 0.0,
    augment: str = "standard",
    aug_group: int = 4,
    schedule: Schedule = Schedule(30, 128, 0.1),
    run: RunOptions = RunOptions(),
) -> Path:
    """Train an expression classifier on one or more dataset folders; export the best epoch on validation.

    Args:
        train: training dataset folders (real, synthetic or both); all must share one expression order.
        out: run folder (see module docs).
        architecture: synfer backbone (fer_resnet_s, fer_resnet18, fer_vgg13, ...) or any timm model name.
        model_kwargs: extra backbone arguments (e.g. {"stem_stride": 2}, {"drop_rate": 0.3}).
        train_split: split read from every training folder.
        ratios: share of each training folder in an epoch (normalised), or
        counts: faces drawn from each folder per epoch; with neither, every face once per epoch.
        epoch_size: faces per epoch with ratios (default: all training faces).
        balanced: class-balanced sampling inside each folder.
        val: folder whose ``val_split`` selects the model (default: the first training folder).
        val_split: validation split name; the test split is never read here.
        input_size: [C, H, W] the model takes (default: the first training image's).
        labels: ``soft`` (cross-entropy to label_probs), ``hard`` (to the expression), or ``sample`` (a hard
            label drawn from label_probs each time: FER+'s "probability" protocol).
        schedule: SGD (Nesterov, momentum 0.9) with cosine decay (plain flags work: --epochs, --batch-size, --lr).
        weight_decay, warmup_epochs: the optimiser's weight decay; linear warm-up before the cosine decay.
        label_smoothing: smoothing of the targets.
        ema_decay: keep an EMA of the weights (0 = off); each epoch the EMA (with BatchNorm statistics recomputed on
            4,096 training faces) and the raw weights are both scored on validation, and the better one is the
            epoch's candidate for export.
        augment: ``standard`` or ``none`` (see fer.data.train_transform).
        aug_group: faces that share one draw of augmentation parameters (4 keeps CPU cost low; 1 = per face).
        run: seed, limit, precision, resume, overwrite, report_to (plain flags work: --seed 1, --resume).

    Returns:
        the run folder (its config.json + model.safetensors are the exported classifier).
    """

    out = Path(out)
    if labels not in ("soft", "hard", "sample"):
        raise ValueError(f"labels must be soft, hard or sample; got {labels!r}.")
    accel, resume = start_run(out, run, schedule)
    data = _load_data(train, train_split, val, val_split, input_size, run.limit)
    sampler = MixSampler([len(p) for p in data.parts], [p.labels for p in data.parts], ratios=ratios, counts=counts,
                         epoch_size=epoch_size, balanced=balanced, seed=run.seed)
    if len(sampler) < schedule.batch_size:
        raise DatasetError(f"{len(sampler)} training faces per epoch is less than one batch of "
                           f"{schedule.batch_size}.")
    images, soft, hard = data.images, data.probs, data.labels
    loader = accel.prepare(torch.utils.data.DataLoader(  # index batches; faces gathered as uint8, augmented below
        IndexDataset(len(images)), batch_size=schedule.batch_size, sampler=sampler, drop_last=True,
        collate_fn=lambda idx: (images[idx], soft[idx], hard[idx])))
    model = ExpressionClassifier(_config(architecture, model_kwargs, data)).to(accel.device)
    steps = len(sampler) // schedule.batch_size
    options = {"train": [str(p) for p in train], "val": str(val or train[0]), "architecture": architecture,
               "model_kwargs": model_kwargs or {}, "train_split": train_split, "val_split": val_split,
               "ratios": ratios, "counts": counts, "epoch_size": epoch_size, "balanced": balanced,
               "input_size": list(data.size), "labels": labels, **vars(schedule),
               "weight_decay": weight_decay, "warmup_epochs": warmup_epochs, "label_smoothing": label_smoothing,
               "ema_decay": ema_decay, "augment": augment, "aug_group": aug_group,
               "precision": resolve_precision(run.precision, accel.device), "seed": run.seed, "limit": run.limit}
    trainer = Trainer(accel, out, {"model": model}, schedule.epochs, steps, schedule.lr,
                      weight_decay=weight_decay, warmup_steps=int(warmup_epochs * steps), max_grad_norm=0.0,
                      ema_decay=ema_decay, fingerprint=options, optimizer="sgd", decay_1d=False)
    trainer.begin(resume, "train-fer", options, data={
        p.name: {"faces": len(p), "per_class": p.labels.bincount(minlength=len(data.names)).tolist()}
        for p in [*data.parts, data.val]})

    transform, seen = train_transform(data.size[1:], augment), {"correct": 0, "faces": 0}

    def loss_fn(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with local_draws():  # augmentation, dropout and sampled labels of this process's rows
            x = _augment(batch[0].cpu(), transform, aug_group).to(accel.device)
            target = _targets(labels, batch[1], batch[2], label_smoothing)
            logits = model(x)
        seen["correct"] += int((logits.argmax(-1) == batch[2]).sum())
        seen["faces"] += len(x)
        return torch.sum(-target * F.log_softmax(logits.float(), -1), -1).mean()

    def end_epoch(epoch: int) -> dict[str, Any]:
        row = {"train_accuracy": seen["correct"] / max(1, seen["faces"]),
               **_select(trainer, model, data, out, run.seed)}
        seen.update(correct=0, faces=0)
        return row

    trainer.fit(loader, loss_fn, end_epoch)
    best = trainer.best
    accel.print(f"best epoch {best['epoch']}: val accuracy {best['val_accuracy']:.4f}; exported to {out}")
    return out


@dataclass
class _Data:
    """train-fer's faces: the training parts (one per folder) concatenated, the validation split, the input size."""

    parts: list[Split]
    val: Split
    size: tuple[int, int, int]

    @property
    def names(self) -> tuple[str, ...]:
        return self.parts[0].names

    @property
    def images(self) -> torch.Tensor:
        return torch.cat([p.images for p in self.parts])

    @property
    def probs(self) -> torch.Tensor:
        return torch.cat([p.probs for p in self.parts])

    @property
    def labels(self) -> torch.Tensor:
        return torch.cat([p.labels for p in self.parts])


def _load_data(train: list[Path], split: str, val: Path | None, val_split: str, input_size: list[int] | None,
               limit: int | None) -> _Data:
    """Every training folder in the first one's expression order and at one input size; the validation split."""
    parts: list[Split] = []
    size = tuple(input_size) if input_size else None
    for path in train:
        part = load_split(path, split, expressions=parts[0].names if parts else None, input_size=size, limit=limit)
        size = size or tuple(part.images.shape[1:])
        parts.append(part)
    return _Data(parts, load_split(val or train[0], val_split, expressions=parts[0].names, input_size=size,
                                   limit=limit), size)


def _config(architecture: str, model_kwargs: dict[str, Any] | None, data: _Data) -> ClassifierConfig:
    c, h, w = data.size
    gray = c == 1
    return ClassifierConfig(architecture=architecture, label_names=list(data.names), input_size=(c, h, w),
                            mean=(0.5,) if gray else (0.5, 0.5, 0.5), std=(0.25,) if gray else (0.25, 0.25, 0.25),
                            model_kwargs=dict(model_kwargs or {}))


def _targets(mode: str, probs: torch.Tensor, hard: torch.Tensor, smoothing: float) -> torch.Tensor:
    """The training target (B, K): the soft label, the hard label one-hot, or a label drawn from the soft one."""
    if mode == "hard":
        target = F.one_hot(hard, probs.shape[1]).float()
    elif mode == "sample":
        target = F.one_hot(torch.multinomial(probs, 1).squeeze(1), probs.shape[1]).float()
    else:
        target = probs
    return target * (1 - smoothing) + smoothing / target.shape[1] if smoothing else target


def _select(trainer: Trainer, model: ExpressionClassifier, data: _Data, out: Path, seed: int) -> dict[str, Any]:
    """Score the raw weights and (if kept) the EMA, with BatchNorm statistics of its own, on validation; export the
    better one when it beats every earlier epoch. Copies are judged, so neither the training weights nor the
    training RNG stream change."""
    device = next(model.parameters()).device
    candidates = {"raw": copy.deepcopy(model)}
    if trainer.ema is not None:
        with trainer.weights("ema"):
            candidates["ema"] = copy.deepcopy(model)
        calib = data.images[torch.randperm(len(data.images), generator=torch.Generator().manual_seed(seed))[:4096]]
        recalibrate_bn(candidates["ema"], calib, device)
    names = list(data.names)
    scores = {k: classification_metrics(data.val.labels.numpy(), predict(c, data.val, device).argmax(-1), names)
              for k, c in candidates.items()}
    pick = max(scores, key=lambda k: scores[k]["accuracy"])
    m = scores[pick]
    if m["accuracy"] > trainer.best.get("val_accuracy", -1.0):
        trainer.best = {"val_accuracy": m["accuracy"], "val_macro_f1": m["macro_f1"], "epoch": trainer.epoch + 1,
                        "weights": pick}
        judge = candidates[pick]
        judge.config.extra = {"selected_on": f"{data.val.name} accuracy", **trainer.best,
                              "trained_on": [p.name for p in data.parts], "seed": seed}
        judge.save_pretrained(out)
    return {"val_accuracy": m["accuracy"], "val_macro_f1": m["macro_f1"], "weights": pick,
            **{f"val_accuracy_{k}": sc["accuracy"] for k, sc in scores.items()}}
