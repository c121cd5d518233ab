"""``synfer label``: pseudo-label a (synthetic) dataset folder with FERAnno and other annotators by ensemble vote.

Every annotator scores every face; :func:`synfer.labeling.vote.vote` decides (agree -> keep, disagree -> the
ensemble mean as soft label, optionally drop when unsure). The output is a new dataset folder with the same images
(hard-linked where the filesystem allows): ``expression`` is the voted label, ``label_probs`` the ensemble mean, and
``meta`` keeps the target (``meta.target``), the status (``meta.vote``) and every annotator's probabilities
(``meta.votes``). Dropped faces are not written; the summary (agreement, relabel and drop rates, per class) of the
faces voted in this run goes to the header's ``stats.label`` and is printed. Resumable with ``--resume`` (dropped
faces are voted again, with the same result).

With ``--near-copies-of TRAIN --near-copy-distance D`` faces closer than D (Euclidean distance of [0, 1] pixels at
the training faces' size) to any face of TRAIN's train split are dropped too, as near-copies of training faces
(``synfer quality --train`` reports the distance below which real test faces almost never come: its
``privacy.pixels.threshold``); their count goes to ``stats.label.near_copies``.

    synfer label runs/syn runs/syn-labelled --annotators runs/feranno,ferplus-resnet-s --threshold 0.5
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..core.dataset import DatasetFolder, Record
from ..importers.common import open_output
from ..schema import check_same_order
from .annotators import load_annotator
from .vote import summarise, vote


def annotator_sha256(spec: str) -> str:
    """SHA-256 of an annotator's weight files (FERAnno head or classifier, by folder or bundled name)."""
    from ..core.assets import resolve
    from ..core.provenance import files_sha256
    from ..models.feranno import is_feranno

    path = resolve("annotator" if is_feranno(spec) else "classifier", spec)
    return files_sha256(path)


def label(
    data: Path,
    out: Path,
    annotators: list[str],
    threshold: float | None = None,
    split: str | None = None,
    near_copies_of: Path | None = None,
    near_copy_distance: float | None = None,
    batch_size: int = 256,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
) -> Path:
    """Vote labels for a dataset folder's faces and write the labelled copy.

    Args:
        data: the dataset folder (typically ``synfer generate``'s output; its ``expression`` is the target).
        out: the labelled dataset folder to write.
        annotators: FERAnno folders (``synfer train-annotator``) and/or classifier folders or bundled names, in the
            data's expression order. Keep the judge you will evaluate with out of this list.
        threshold: drop faces the annotators disagree on whose ensemble confidence is below this (None: keep all).
        split: label only this split (default all records).
        near_copies_of: a dataset folder of the generator's training faces (its ``train`` split).
        near_copy_distance: with ``near_copies_of``, drop faces nearer than this to a training face (pixels).
        batch_size: faces per annotator call.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda:1`` ...
        resume, overwrite: continue an interrupted run / replace ``out``.

    Returns:
        ``out``.
    """
    from ..core.runtime import resolve_device

    if not annotators:
        raise ValueError("Give at least one annotator (--annotators FERANNO_DIR,ferplus-resnet-s).")
    if (near_copies_of is None) != (near_copy_distance is None):
        raise ValueError("Give --near-copies-of and --near-copy-distance together (or neither).")
    if near_copy_distance is not None and near_copy_distance <= 0:
        raise ValueError(f"near_copy_distance must be > 0; got {near_copy_distance}.")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is an ensemble confidence in [0, 1]; got {threshold}.")
    folder = DatasetFolder(data)
    names = list(folder.expressions)
    dev = resolve_device(device)
    models = {}
    for spec in annotators:
        models[spec] = load_annotator(spec, dev)
        check_same_order("expression", list(models[spec].label_names), names, f"annotator {spec}", str(data))
    records = list(folder.records(split))
    if not records:
        raise ValueError(f"{data} has no records" + (f" in split {split!r}" if split else "") + ".")
    config = {"data": str(Path(data).resolve()), "annotators": list(annotators), "threshold": threshold,
              "split": split, "annotator_sha256": {s: annotator_sha256(s) for s in annotators}}
    train_faces = None
    if near_copies_of is not None:
        from ..core.splits import load_split

        train_faces = load_split(near_copies_of, "train", expressions=names)
        config["near_copies"] = {"of": str(Path(near_copies_of).resolve()), "distance": near_copy_distance}
    writer = open_output(out, names, "label", config, aus=folder.header.aus, overwrite=overwrite, resume=resume,
                         licence=folder.header.licence)
    targets_all, results, near_total = [], [], 0
    try:
        todo = [r for r in records if not writer.has(r.id)]
        for start in tqdm(range(0, len(todo), batch_size), desc="label", unit="batch"):
            batch = todo[start:start + batch_size]
            images = [folder.load_image(r.image) for r in batch]
            probs = np.stack([models[s](images).numpy() for s in annotators])  # (A, B, K)
            targets = np.array([names.index(r.expression) if r.expression is not None else -1 for r in batch])
            res = vote(probs, targets, threshold)
            targets_all.append(targets)
            results.append(res)
            near = np.zeros(len(batch), dtype=bool)
            if train_faces is not None:
                near = _near_copies(images, train_faces.images, near_copy_distance)
                near_total += int(near.sum())
            for j, r in enumerate(batch):
                if res.status[j] == "drop" or near[j]:
                    continue
                meta = {**(r.meta or {}), "target": r.expression, "vote": str(res.status[j]),
                        "votes": {s: [round(float(p), 5) for p in probs[a, j]] for a, s in enumerate(annotators)}}
                soft = res.soft[j] / res.soft[j].sum()
                writer.add(Record(id=r.id, split=r.split, source=r.source, expression=names[int(res.label[j])],
                                  label_probs=soft.tolist(), aus=r.aus, caption=r.caption, meta=meta),
                           folder.image_path(r.image), link=True)
    except BaseException:
        writer.close(complete=False)
        raise
    if results:
        merged = type(results[0])(np.concatenate([r.label for r in results]), np.concatenate([r.soft for r in results]),
                                  np.concatenate([r.status for r in results]))
        summary = summarise(merged, np.concatenate(targets_all), names)
        if train_faces is not None:
            summary["near_copies"] = near_total
        writer.header.stats["label"] = summary
        print(json.dumps({k: v for k, v in summary.items() if k != "per_class"}))
    writer.close(complete=True)
    return out


def _near_copies(images: list, train_images, distance: float) -> np.ndarray:
    """(B,) bool: which PIL faces lie within ``distance`` of a training face (uint8 (M, C, H, W)), in pixels."""
    import torch

    from ..core.batching import stack_nchw
    from ..core.nearest import near_copy_mask

    c, h, w = train_images.shape[1:]
    mode = "L" if c == 1 else "RGB"
    arrays = [np.asarray(im.convert(mode).resize((w, h)), dtype=np.uint8) for im in images]
    arrays = [a[..., None] if a.ndim == 2 else a for a in arrays]
    batch = stack_nchw(arrays) if arrays else torch.zeros(0, c, h, w, dtype=torch.uint8)
    return near_copy_mask(batch, train_images, distance)[0]
