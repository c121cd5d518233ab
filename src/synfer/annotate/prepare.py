"""``synfer prepare``: add FACS AU intensities, captions and face presence to a dataset folder (FEText-style).

Reads a dataset folder and writes a new one with the same records (ids, splits, labels, images hard-linked where
the file system allows) plus:

* ``aus``: the estimator's AU intensities in the header's AU order (the estimator's AU set);
* ``caption``: a sentence on the expression (the soft label when there is one), its AU cues and the head pose;
* ``meta.face_presence``: the estimator's face score in [0, 1], and ``meta.head_pose`` (yaw, pitch, roll in
  degrees) where a face was found.

No face: a record whose face presence is below ``min_face_presence`` keeps ``aus = None`` ("unknown", not
"no action": an all-zero vector would claim a neutral face) and its caption describes only the expression. It is
written, never dropped, and counted in the header's ``stats.prepare.no_face``. On FER+ the fast path's face
score is below 0.5 for about 20% of the crops (low-resolution gray faces); lower ``min_face_presence`` to keep
their (noisier) AUs.

Resumable: ``--resume`` skips ids already written. Captions are seeded per record by ``crc32(f"{seed}:{id}")``, so
a resumed or repeated run writes the same text. Time per step (decode, preprocess, landmarks, blendshapes,
captions, write) is summed into ``stats.prepare.timing_s``.
"""

from __future__ import annotations

import time
import zlib
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..core.dataset import DatasetFolder, Record
from ..core.report import au_means, format_table
from ..importers.common import open_output
from .au import create_estimator
from .au.base import timed
from .captions import create_captioner

#: Records per shard: a killed run loses at most this many (they are redone on resume).
FLUSH_EVERY = 2000


def _expression_input(rec: Record, expressions: tuple[str, ...]) -> str | dict[str, float] | None:
    if rec.label_probs is not None:
        return {e: float(p) for e, p in zip(expressions, rec.label_probs, strict=True)}
    return rec.expression


def caption_seed(seed: int, record_id: str) -> int:
    """The caption seed of one record: stable across runs, resumes and batch sizes."""
    return zlib.crc32(f"{seed}:{record_id}".encode())


def prepare(
    src: Path,
    out: Path,
    au_model: Path | None = None,
    estimator: str = "mediapipe",
    captioner: str = "template",
    splits: list[str] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    limit: int | None = None,
    min_face_presence: float = 0.5,
    caption_model: str | None = None,
    keep_blendshapes: bool = False,
    num_threads: int | None = None,
    align: str | None = None,
    align_size: int = 128,
) -> Path:
    """Add AU intensities, captions and face presence to a dataset folder, writing a new folder.

    Args:
        src: the dataset folder to read (left untouched).
        out: the dataset folder to write.
        au_model: MediaPipe's ``face_landmarker.task`` (Face Landmarker, float16, from MediaPipe's model page).
        estimator: ``mediapipe`` (aligned face crops such as FER+; no face detector), ``mediapipe-full``
            (arbitrary photos; detects the face first) or ``distilled`` (synfer's CNN distilled from
            ``mediapipe``; ``au_model`` is then its folder, default the bundled one; no pose).
        captioner: ``template`` (built in) or ``llm`` (needs --caption-model).
        splits: only these splits (default all).
        batch_size: images per estimator call.
        seed: caption seed (each record's seed derives from it and the record id).
        resume: continue an interrupted run into ``out`` (same options).
        overwrite: replace ``out`` if it exists.
        limit: process at most this many records (the first in folder order), e.g. for a quick look.
        min_face_presence: below this face score a record gets no AUs (None) and no pose.
        caption_model: text-generation model folder or hub id for ``--captioner llm``.
        keep_blendshapes: also store the 52 raw blendshape scores in each record's meta.
        num_threads: CPU threads of the AU estimator (default: the runtime's choice).
        align: MediaPipe's ``face_landmarker.task`` to find and align the face of each image first (ordinary
            photos; FER+ and RAF-DB's aligned crops need none): the output holds the aligned crops, each record's
            ``meta["aligned_crop"]`` says where it came from (:mod:`synfer.annotate.align`); an image without a
            face keeps its pixels and gets no AUs.
        align_size: side of the aligned crops in pixels.

    Returns:
        the output folder.
    """
    src, out = Path(src), Path(out)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}.")
    if not 0.0 <= min_face_presence <= 1.0:
        raise ValueError(f"min_face_presence must be in [0, 1]; got {min_face_presence}.")
    if out.resolve() == src.resolve():
        raise ValueError(f"prepare writes a new folder; out ({out}) must differ from src ({src}).")
    folder = DatasetFolder(src)
    present = sorted(set(folder.column("split")))
    if splits:
        unknown = [s for s in splits if s not in present]
        if unknown:
            raise ValueError(f"{src} has no split(s) {unknown}; it has {present}.")
    records = [r for r in folder.records() if not splits or r.split in splits]
    if limit is not None:
        records = records[:limit]
    # Build the estimator and captioner before creating the output: a missing model fails with nothing written.
    est = create_estimator(estimator, au_model, **({} if num_threads is None else {"num_threads": num_threads}))
    with ExitStack() as cleanup:
        if hasattr(est, "close"):  # the Tasks API landmarker holds native resources
            cleanup.callback(est.close)
        aligner = None
        if align is not None:
            from .align import FaceAligner

            aligner = cleanup.enter_context(FaceAligner(align, size=align_size))
        cap = create_captioner(captioner, caption_model)
        config = {
            "source": str(src.resolve()),
            "estimator": getattr(est, "describe", lambda: {"estimator": estimator})(),
            "captioner": getattr(cap, "describe", lambda: {"captioner": captioner})(),
            "splits": splits, "seed": seed, "limit": limit, "min_face_presence": min_face_presence,
            "keep_blendshapes": keep_blendshapes, "align": aligner.describe() if aligner else None,
        }
        config["captioner"].pop("fallbacks", None)  # a count, not an option
        writer = open_output(out, folder.expressions, "prepare", config, aus=est.au_set, overwrite=overwrite,
                             resume=resume, licence=folder.header.licence)
        if len(writer.header.provenance) == 1:  # a fresh folder: carry the source's history and stats forward
            writer.header.provenance = [*folder.header.provenance, *writer.header.provenance]
            carried = {k: v for k, v in folder.header.stats.items() if k not in ("records", "prepare")}
            writer.header.stats.update(carried)
        writer.flush_every = FLUSH_EVERY
        todo = [r for r in records if not writer.has(r.id)]
        stats = writer.header.stats.setdefault("prepare", {})
        timing: dict[str, float] = {}
        names = est.au_set.names
        t_start = time.perf_counter()
        with writer:
            try:
                progress = tqdm(total=len(todo), desc="prepare", unit="img", mininterval=2.0)
                for start in range(0, len(todo), batch_size):
                    batch = todo[start:start + batch_size]
                    images, aligned = _load(folder, batch, aligner, timing)
                    result = est.estimate(images)
                    for i, rec in enumerate(batch):
                        if aligned is not None and aligned[i] is None:
                            result.face_presence[i] = 0.0  # the aligner found no face: no AUs either
                        with timed(timing, "captions"):
                            row = _annotated(rec, result, i, names, cap, folder.expressions, seed,
                                             min_face_presence, keep_blendshapes)
                        with timed(timing, "write"):
                            if aligned is None:
                                writer.add(row, folder.image_path(rec.image), link=True)
                            else:
                                if aligned[i] is not None:
                                    row.meta["aligned_crop"] = aligned[i][1].to_dict()
                                writer.add(row, images[i])
                    progress.update(len(batch))
                progress.close()
                writer.flush()
                done = DatasetFolder(out, allow_incomplete=True)
                aus_col = done.column("aus")
                stats["records_with_aus"] = sum(a is not None for a in aus_col)
                stats["no_face"] = len(aus_col) - stats["records_with_aus"]
            finally:  # also when interrupted: the time spent is recorded, summed over runs
                _add_timing(stats, {**timing, **getattr(est, "timings", {})}, time.perf_counter() - t_start,
                            getattr(cap, "fallbacks", None))

    return out


def _load(folder: DatasetFolder, batch: list[Record], aligner: Any, timing: dict[str, float]
          ) -> tuple[list[Any], list[Any] | None]:
    """A batch's images, and with an aligner their aligned crops ((crop, alignment) or None per image; an image
    without a face keeps its pixels)."""
    with timed(timing, "decode"):
        images = [folder.load_image(r.image) for r in batch]
    if aligner is None:
        return images, None
    with timed(timing, "align"):
        aligned = [aligner.align(im) for im in images]
    return [a[0] if a else im for a, im in zip(aligned, images, strict=True)], aligned


def _annotated(rec: Record, result: Any, i: int, names: tuple[str, ...], cap: Any, expressions: tuple[str, ...],
               seed: int, min_face_presence: float, keep_blendshapes: bool) -> Record:
    """``rec`` with face ``i`` of the estimator's ``result``: its AUs (None where no face was found), caption and
    face presence, head pose and blendshapes in ``meta``."""
    presence = float(result.face_presence[i])
    found = presence >= min_face_presence
    pose = result.pose_dict(i) if found else None
    text = cap.caption(_expression_input(rec, expressions), result.au_dict(i, names) if found else None, pose,
                       seed=caption_seed(seed, rec.id))
    meta = {**rec.meta, "face_presence": round(presence, 4)}
    if pose is not None:
        meta["head_pose"] = pose
    if keep_blendshapes and result.blendshapes is not None:
        meta["blendshapes"] = np.round(result.blendshapes[i], 4).tolist()
    return Record(id=rec.id, split=rec.split, source=rec.source, expression=rec.expression,
                  label_probs=rec.label_probs, aus=result.aus[i].tolist() if found else None, caption=text, meta=meta)


def _add_timing(stats: dict[str, Any], timing: dict[str, float], wall: float, fallbacks: int | None) -> None:
    """Add one run's seconds per stage, wall time and caption fallbacks to the header's running totals."""
    total = stats.setdefault("timing_s", {})
    for k, v in timing.items():
        total[k] = round(total.get(k, 0.0) + v, 3)
    total["wall"] = round(total.get("wall", 0.0) + wall, 3)
    stats["runs"] = stats.get("runs", 0) + 1
    if fallbacks:
        stats["caption_fallbacks"] = stats.get("caption_fallbacks", 0) + fallbacks

def au_table(path: Path) -> str:
    """The mean intensity of each AU per expression of a dataset folder, as a text table (rows: expressions in
    header order; records without AUs are left out)."""
    folder = DatasetFolder(path, allow_incomplete=True)
    means = au_means(folder)
    if not means:
        return f"{path}: no AU values (run `synfer prepare` on it first)."
    names = folder.au_names
    rows = [[e, *(f"{m[n]:.3f}" for n in names)] for e, m in means.items()]
    return format_table(["expression", *names], rows)
