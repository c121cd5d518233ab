"""One loader for every split: dataset-folder records decoded into memory, and epoch plans over them.

Faces here are small (48-112 px), so a split is decoded once into a uint8 tensor and kept in memory; an epoch is a
list of indices planned by :class:`MixSampler` (which folder contributes how many faces, optionally
class-balanced). Every trainer and every evaluation reads its faces with :func:`load_split`: classifiers their
labels, the generator trainers their captions and AUs, the AU estimator its teacher's AUs and face presence.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from ..schema import check_same_order
from .batching import IndexDataset, decode_image, stack_nchw
from .dataset import DatasetError, DatasetFolder


@dataclass
class Split:
    """One split of one or more dataset folders, decoded.

    Attributes:
        images: (N, C, H, W) uint8.
        ids: record ids.
        names: the expression order of the folders' headers (all folders share it).
        labels: (N,) int64 hard labels (the record's ``expression``, else the argmax of its soft label; -1 where
            a record has neither).
        probs: (N, K) float32 soft labels in ``names`` order (one-hot where only a hard label exists, zeros where
            none).
        captions: N captions ("" where a record has none).
        aus: (N, A) float32 in ``au_names`` order (zeros where a record has none), or None when AUs were not asked
            for.
        has_aus: (N,) bool, which rows have AU values.
        face: (N,) float32 face presence of the AU estimator (``meta.face_presence``; 1 where AUs exist without
            it, else 0), where AUs were asked for.
        au_names: the header's AU order (empty without AUs).
        skipped: records left out (without a caption where one is required).
        name: ``"<folder>:<split>"`` (the first folder) for messages and logs.
    """

    images: torch.Tensor
    ids: list[str]
    names: tuple[str, ...]
    labels: torch.Tensor
    probs: torch.Tensor
    captions: list[str]
    aus: torch.Tensor | None
    has_aus: torch.Tensor
    face: torch.Tensor
    au_names: tuple[str, ...]
    skipped: int
    name: str

    def __len__(self) -> int:
        return len(self.ids)

    def label_names(self) -> list[str | None]:
        """Each face's expression name (None where unlabelled)."""
        return [self.names[k] if k >= 0 else None for k in self.labels.tolist()]

    def soft_label(self, i: int) -> dict[str, float] | None:
        """Face ``i``'s label distribution ``{expression: p}`` (None where unlabelled)."""
        if int(self.labels[i]) < 0:
            return None
        return {n: float(p) for n, p in zip(self.names, self.probs[i].tolist(), strict=True)}


def _rows(folder: DatasetFolder, split: str, need_aus: bool) -> list[dict[str, Any]]:
    columns = ["id", "image", "expression", "label_probs", "caption"] + (["aus", "meta"] if need_aus else [])
    return folder.select_split(split).select(columns).to_pylist()


def load_split(paths: str | Path | Sequence[str | Path], split: str, expressions: Sequence[str] | None = None,
               input_size: tuple[int, int, int] | None = None, labelled: bool = True,
               need_captions: bool = False, need_aus: bool = False, limit: int | None = None) -> Split:
    """Decode one split of one or more dataset folders.

    Args:
        paths: a dataset folder or several (all in the first one's expression order, and AU order with AUs).
        split: ``train`` / ``val`` / ``test`` / any split name in the folders.
        expressions: if given, the folders' expression order must equal it (else ``OrderMismatchError``).
        input_size: (C, H, W) to convert and resize to; default: the first image's size and mode.
        labelled: keep only records with a label (expression or soft label); a split without any is refused
            (False: every record, e.g. captioned faces for the generator; an empty split gives an empty result).
        need_captions: keep only records with a caption (the others are counted in ``skipped``); a split without
            any caption is refused.
        need_aus: read AUs and face presence; every folder must have AUs and the split some record with them.
        limit: keep at most this many records of each folder (the first ones, for quick runs).

    Returns:
        the split.
    """
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    rows: list[tuple[DatasetFolder, dict[str, Any]]] = []
    names: tuple[str, ...] | None = tuple(expressions) if expressions is not None else None
    au_names: tuple[str, ...] = ()
    skipped = 0
    for path in paths:
        folder = DatasetFolder(path, expect_expressions=names)
        names = names or tuple(folder.expressions)
        if need_aus:
            if folder.header.aus is None:
                raise DatasetError(f"{path} has no AU values; run `synfer prepare {path} OUT` first and train on OUT.")
            if au_names:
                check_same_order("AU", au_names, folder.au_names, str(paths[0]), str(path))
            au_names = tuple(folder.au_names)
        table = _rows(folder, split, need_aus)
        if labelled:
            table = [r for r in table if r["expression"] is not None or r["label_probs"] is not None]
        if need_captions:
            if table and all(r["caption"] is None for r in table):
                raise DatasetError(f"{path}: no record of split {split!r} has a caption; run `synfer prepare "
                                   f"{path} OUT` first (it writes captions and AUs) and train on OUT.")
            skipped += sum(r["caption"] is None for r in table)
            table = [r for r in table if r["caption"] is not None]
        table = table[:limit] if limit is not None else table
        if need_aus and table and all(r["aus"] is None for r in table):
            raise DatasetError(f"{path}: no record of split {split!r} has AU values; run `synfer prepare {path} "
                               "OUT` first and train on OUT.")
        if labelled and not table:
            have = sorted(set(folder.column("split")))
            raise DatasetError(f"{path}: no labelled records in split {split!r} (splits present: {have}).")
        rows += [(folder, r) for r in table]
    return _decode(rows, names or (), au_names, input_size, need_aus, skipped, f"{paths[0]}:{split}")


def _decode(rows: list[tuple[DatasetFolder, dict[str, Any]]], names: tuple[str, ...], au_names: tuple[str, ...],
            size: tuple[int, int, int] | None, need_aus: bool, skipped: int, name: str) -> Split:
    """The rows' images, labels, captions and AUs as tensors."""
    n, k = len(rows), len(names)
    if n and size is None:
        first = rows[0][0].load_image(rows[0][1]["image"])
        size = (1 if first.mode in ("L", "I", "I;16") else 3, first.height, first.width)
    size = size or (1, 1, 1)
    if n:
        mode = "L" if size[0] == 1 else "RGB"
        with ThreadPoolExecutor(max_workers=4) as pool:  # PNG decoding releases the GIL
            images = stack_nchw(list(pool.map(lambda fr: decode_image(fr[0].image_path(fr[1]["image"]), mode,
                                                                      size[1:]), rows)))
    else:
        images = torch.zeros(0, *size, dtype=torch.uint8)
    probs, labels = torch.zeros(n, k), torch.full((n,), -1, dtype=torch.long)
    for i, (_, r) in enumerate(rows):
        if r["label_probs"] is not None:
            probs[i] = torch.tensor(r["label_probs"])
        if r["expression"] is not None:
            labels[i] = names.index(r["expression"])
        elif r["label_probs"] is not None:
            labels[i] = int(probs[i].argmax())
        if r["label_probs"] is None and labels[i] >= 0:
            probs[i, labels[i]] = 1.0
    has_aus = torch.tensor([bool(need_aus and r["aus"] is not None) for _, r in rows], dtype=torch.bool)
    aus = face = None
    if need_aus:
        aus = torch.tensor([r["aus"] if r["aus"] is not None else [0.0] * len(au_names) for _, r in rows],
                           dtype=torch.float32).reshape(n, len(au_names))
        # without a recorded score, trust the AU column: prepare writes AUs only where it saw a face
        face = torch.tensor([float((json.loads(r["meta"]) if r["meta"] else {}).get(
            "face_presence", 1.0 if r["aus"] is not None else 0.0)) for _, r in rows], dtype=torch.float32)
    return Split(images, [r["id"] for _, r in rows], names, labels, probs, [r["caption"] or "" for _, r in rows],
                 aus, has_aus, face if face is not None else torch.zeros(n), au_names, skipped, name)


class MixSampler(Sampler[int]):
    """Plans each epoch over several concatenated sources.

    Args:
        sizes: number of faces in each source (they are concatenated in this order).
        labels: per source, its hard labels (for class balancing).
        ratios: share of each source in an epoch (normalised), or None.
        counts: fixed faces per source per epoch, or None. With neither, every face of every source once.
        epoch_size: faces per epoch with ``ratios`` (default: the total size).
        balanced: within each source, draw faces with probability inversely proportional to their class
            frequency (with replacement), so each class is seen about equally often.
        balance_power: with ``balanced``, the probability goes as frequency ** -balance_power: 1 sees every class
            equally often, 0.5 (square-root balancing) lifts rare classes without repeating their few faces as
            often (what a generator that must also learn faces, not only labels, wants).
        seed: base seed; epoch ``e`` uses ``seed + e``, so a resumed run replays the same epochs.
    """

    def __init__(self, sizes: Sequence[int], labels: Sequence[torch.Tensor], ratios: Sequence[float] | None = None,
                 counts: Sequence[int] | None = None, epoch_size: int | None = None, balanced: bool = False,
                 seed: int = 0, balance_power: float = 1.0) -> None:
        if ratios is not None and counts is not None:
            raise ValueError("Give ratios or counts, not both.")
        for name, v in (("ratios", ratios), ("counts", counts)):
            if v is not None and len(v) != len(sizes):
                raise ValueError(f"{len(v)} {name} for {len(sizes)} data folders; give one per folder.")
            if v is not None and min(v) < 0:
                raise ValueError(f"{name} must be non-negative; got {list(v)}.")
        if not 0 <= balance_power <= 1:
            raise ValueError(f"balance_power must be in [0, 1]; got {balance_power}.")
        self.sizes, self.labels, self.balanced, self.seed, self.epoch = list(sizes), list(labels), balanced, seed, 0
        self.balance_power = float(balance_power)
        if counts is not None:
            self.per_source = [int(c) for c in counts]
        elif ratios is not None:
            total = float(sum(ratios))
            if total <= 0:
                raise ValueError("ratios must not all be zero.")
            n = epoch_size or sum(sizes)
            self.per_source = [int(round(n * r / total)) for r in ratios]
        else:
            self.per_source = list(sizes)
        self.offsets = np.cumsum([0] + self.sizes[:-1]).tolist()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self, epoch: int) -> np.ndarray:
        """Indices (into the concatenation) of one epoch, shuffled."""
        rng = np.random.default_rng(self.seed + epoch)
        parts = []
        for size, want, offset, labels in zip(self.sizes, self.per_source, self.offsets, self.labels, strict=True):
            if want == 0:
                continue
            if self.balanced:
                freq = np.bincount(labels.numpy())
                p = freq[labels.numpy()].astype(np.float64) ** -self.balance_power
                idx = rng.choice(size, want, replace=True, p=p / p.sum())
            elif want <= size:
                idx = rng.permutation(size)[:want]
            else:  # more than the folder holds: every face once, the rest drawn again
                idx = np.concatenate([rng.permutation(size), rng.choice(size, want - size, replace=True)])
            parts.append(idx + offset)
        order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return order[rng.permutation(len(order))]

    def __iter__(self) -> Iterator[int]:
        return iter(self.plan(self.epoch).tolist())

    def __len__(self) -> int:
        return sum(self.per_source)



def index_loader(n: int, batch_size: int, seed: int, collate: Callable[[list[int]], Any],
                 classes: Sequence[str | None] | None = None, class_balance: float = 0.0) -> torch.utils.data.DataLoader:
    """Shuffled index batches (epoch ``e`` uses ``seed + e``, so a resumed run replays the same plan).

    With ``class_balance`` > 0 an epoch (still ``n`` faces) draws face i with probability proportional to
    ``count(class_i) ** -class_balance`` (``classes``: one label per face; unlabelled faces form one class), with
    replacement: 1 sees each class equally often, 0.5 is square-root balancing, 0 every face once.
    """
    if n < batch_size:
        raise DatasetError(f"{n} training images is less than one batch of {batch_size}; lower --batch-size.")
    if class_balance and classes is None:
        raise ValueError("class_balance needs the faces' classes.")
    labels = torch.zeros(n, dtype=torch.long)
    if class_balance:
        names = sorted({str(c) for c in classes})
        labels = torch.tensor([names.index(str(c)) for c in classes], dtype=torch.long)
    sampler = MixSampler([n], [labels], seed=seed, balanced=class_balance > 0, balance_power=class_balance or 1.0)
    return torch.utils.data.DataLoader(IndexDataset(n), batch_size=batch_size, sampler=sampler, drop_last=True,
                                       collate_fn=collate)
