"""``synfer generate``: a labelled synthetic dataset folder from a generator, resumable, one seed per face.

The whole plan is fixed before anything is generated: face ``k`` gets id ``syn{k:07d}``, its target expression,
its own seed ``crc32("{seed}:{k}")``, a prompt enriched from a coarse description and the target, and target AUs.
A killed run resumes with ``--resume``: faces already listed in the folder are skipped, so the folder ends with
exactly the planned records and no duplicates (images are written before the shard that lists them).

Target AUs (``au_source``):
  * a prepared dataset folder: each face draws the AU vector of a random real face of its class from the folder's
    ``train`` split (the empirical per-class distribution, correlations between AUs kept);
  * ``auto``: the per-class means shipped with the pipeline (``au_targets.json``), else the EMFACS prototypes;
  * ``prototype``: the EMFACS prototypes; ``none``: text only (no AU condition).
``au_jitter`` adds uniform noise of that half-width to each target AU (clipped to [0, 1]).

Layout initialisation (``layout``): each face starts from the DDIM inversion of a real face picked by its seed
(:mod:`synfer.generator.layout`), at ``layout_strength`` of the schedule, instead of pure noise.

Sharding: run the same command under several processes and each generates its share of the faces still missing,
into its own record shards (``records-p<rank>-*.parquet``); the main process opens the folder first and completes
it last. Any process count works, also for ``--resume`` of a run made with another count::

    torchrun --nproc_per_node 4 -m synfer generate OUT ...          # 4 GPUs (or 4 CPU processes on gloo)
    accelerate launch --multi_gpu --num_processes 4 -m synfer generate OUT ...
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --master_addr HOST --master_port 29500 \
        -m synfer generate OUT ...                                   # 2 nodes: OUT on a shared filesystem

Every record carries its generation parameters in ``meta`` (seed, coarse description, sampler, scales, semantic
guidance and the guidance model with its weights' hash, the generator's hash); ``aus`` holds the target AUs and
``caption`` the prompt.

(One file past 400 lines on purpose: the verb's recipe and its small steps (plan, sampler, guidance, layout,
writer, sharding) share the run's state and read top to bottom in one place.)
"""

from __future__ import annotations

import random
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..annotate.prompts import enrich_prompt
from ..core.assets import resolve
from ..core.dataset import DatasetFolder, DatasetWriter, Record
from ..core.options import SamplerOptions
from ..core.provenance import files_sha256
from ..core.runtime import resolve_precision
from ..generator.au_targets import expression_au_targets
from ..generator.pipeline import load_generator
from ..importers.common import open_output
from ..models.classifiers import DEFAULT_CLASSIFIER, ExpressionClassifier
from ..schema import FERPLUS8, AUSet, canonical_expression, check_same_order

#: Records per shard flush: a killed run redoes at most this many faces.
FLUSH_EVERY = 256
#: The guidance step when only the AU term guides (semantic_guidance 0, au_guidance > 0).
AU_ONLY_STEP = 0.05


@dataclass
class PlannedFace:
    """One face of the plan."""

    index: int
    id: str
    expression: str
    seed: int
    coarse: str
    aus: list[float] | None


def plan_faces(counts: dict[str, int], au_names: tuple[str, ...] | None, au_source: str, seed: int,
               coarse: list[str] | None = None, au_jitter: float = 0.0, pipeline_dir: Path | None = None
               ) -> list[PlannedFace]:
    """The full, deterministic plan: the same arguments always give the same faces in the same order."""
    exprs = list(counts)
    pools: dict[str, list[list[float]]] = {}
    means = None
    if au_names is not None and au_source != "none":
        source = Path(au_source)
        if source.is_dir() and (source / "dataset.json").is_file():
            folder = DatasetFolder(source)
            check_same_order("AU", list(au_names), list(folder.au_names), "the generator's AU adapter", str(source))
            for rec in folder.records("train"):
                if rec.aus is not None and rec.expression in counts:
                    pools.setdefault(rec.expression, []).append(list(rec.aus))
            empty = [e for e in exprs if counts[e] and e not in pools]
            if empty:
                raise ValueError(f"{source} has no training face with AUs for {empty}; lower their counts to 0 or "
                                 "use --au-source auto / prototype.")
        else:
            means = expression_au_targets(exprs, au_names, au_source, pipeline_dir).tolist()
    plan, k = [], 0
    for ei, e in enumerate(exprs):
        for _ in range(counts[e]):
            s = zlib.crc32(f"{seed}:{k}".encode())
            rng = random.Random(s)
            aus = None
            if pools:
                aus = list(rng.choice(pools[e]))
            elif means is not None:
                aus = list(means[ei])
            if aus is not None and au_jitter:
                aus = [min(1.0, max(0.0, a + rng.uniform(-au_jitter, au_jitter))) for a in aus]
            plan.append(PlannedFace(k, f"syn{k:07d}", e, s, rng.choice(coarse) if coarse else "", aus))
            k += 1
    return plan


def layout_pick(seed: int, n: int) -> int:
    """The layout face of a planned face: a function of its seed alone, so resumed and sharded runs agree."""
    return random.Random(seed ^ 0x5EED).randrange(n)


def generate(
    out: Path,
    pipeline: str = "bundled",
    per_class: int | None = 100,
    counts: dict[str, int] | None = None,
    expressions: list[str] | None = None,
    coarse: list[str] | None = None,
    au_source: str = "auto",
    au_jitter: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
    au_adapter_scale: float | None = None,
    semantic_guidance: float = 0.0,
    guidance_window: tuple[float, float] = (0.6, 1.0),
    guidance_model: str = DEFAULT_CLASSIFIER,
    au_guidance: float = 0.0,
    au_model: str | None = None,
    layout: Path | None = None,
    layout_strength: float = 0.7,
    layout_split: str = "train",
    layout_align: str | None = None,
    split: str = "train",
    compile: bool = False,
    preview: bool = True,
    flush_every: int = FLUSH_EVERY,
    resume: bool = False,
    overwrite: bool = False,
    sampling: SamplerOptions = SamplerOptions(),
) -> Path:
    """Generate a labelled synthetic dataset folder.

    Args:
        out: the dataset folder to write.
        pipeline: SynferPipeline folder or bundled name (``bundled``: the mini FER+ model).
        per_class: faces per expression (balanced), unless ``counts`` is given.
        counts: faces per expression, e.g. {"happiness": 500, "fear": 2000}; expressions left out get 0.
        expressions: the label set in header order (default: FER+'s eight; aliases accepted).
        coarse: coarse descriptions drawn per face ("an old man", "a young woman with glasses"); default anyone.
        au_source: where target AUs come from (module docs): a prepared folder, ``auto``, ``prototype``, ``none``.
        au_jitter: uniform noise half-width added to each target AU.
        seed: the run's seed; face k uses crc32("{seed}:{k}") for its noise, prompt, coarse pick and AU draw.
        batch_size: faces per pipeline call.
        sampling: steps, guidance scales, device and precision (plain flags work: --num-inference-steps 4).
        au_adapter_scale: the AU adapter's attention scale (1 as trained, above 1 the AUs weigh more against the
            text; None: the pipeline's).
        semantic_guidance: lambda of semantic guidance (0 = off; 0.05 is a reasonable start).
        guidance_window: fractions (start, end) of the steps where semantic guidance acts.
        guidance_model: the classifier that guides (folder or bundled name); recorded, so it never judges the set.
        au_guidance: weight of the AU term in the guidance loss (needs the AU adapter's AUs; uses ``au_model``);
            with semantic_guidance 0 the AU term alone guides, with a step of 0.05.
        au_model: distilled AU estimator folder or name for AU guidance (default the bundled one).
        layout: layout initialisation: a dataset folder (or image folder) of real faces; each generated face starts
            from the DDIM inversion of one of them (picked by its seed) instead of pure noise.
        layout_strength: share of the schedule run from the inverted face (lower keeps more of its pose and look).
        layout_split: the split of a dataset folder ``layout`` draws from.
        layout_align: MediaPipe's ``face_landmarker.task`` to find and align the faces of ``layout`` first
            (ordinary photos; a prepared folder of aligned crops needs none).
        split: the split name written on every record.
        compile: compile the generator's UNet (``torch.compile``) before the first batch: worth it for long runs
            (on a 2-core CPU about 8% faster for a minute's compilation per batch shape); the compilation time is
            printed and kept in the header's stats.
        preview: write ``OUT/preview.png`` (up to 8 faces per expression) at the end.
        flush_every: faces per record shard; a killed run redoes at most this many.
        resume: continue an interrupted run (same options).
        overwrite: replace ``out``.

    Returns:
        the dataset folder.
    """
    out = Path(out)
    exprs = [canonical_expression(e) for e in (expressions or FERPLUS8.names)]
    want = _wanted_counts(exprs, per_class, counts)
    check_options(batch_size=batch_size, num_inference_steps=sampling.num_inference_steps, au_jitter=au_jitter,
                  guidance_scales=(sampling.guidance_scale_text, sampling.guidance_scale_au, au_adapter_scale),
                  semantic_guidance=semantic_guidance, au_guidance=au_guidance, guidance_window=guidance_window,
                  layout_strength=layout_strength, split=split, flush_every=flush_every)
    # Sharding (``accelerate launch`` / ``torchrun ... -m synfer generate``): the main process opens (or resumes)
    # the folder, then every process writes its share of the faces still missing into its own shards, and the main
    # one counts them in. On a machine without GPUs the processes share the CPU (gloo).
    from accelerate import PartialState

    state = PartialState(cpu=sampling.device == "cpu" or not torch.cuda.is_available())
    # 1. the generator, the plan and the sampler settings
    pipe, pipe_dir = load_generator(pipeline, state.device if sampling.device == "auto" else sampling.device)
    au_names = tuple(pipe.au_adapter.au_names) if pipe.au_adapter is not None else None
    au_source = au_source if au_names is not None else "none"  # no adapter: text alone
    plan = plan_faces(want, au_names, au_source, seed, coarse, au_jitter, pipe_dir)
    run = _Run(pipe, exprs, au_names, au_source, split, _sampler(pipe, sampling, au_adapter_scale),
               {"pipeline": str(pipeline), "sha256": files_sha256(pipe_dir)})
    # 2. semantic guidance and layout initialisation, each checked before anything is written
    run.guidance = _guidance(run, semantic_guidance, guidance_window, guidance_model, au_guidance, au_model)
    run.layout = _layout(run, layout, layout_strength, layout_split, layout_align)
    config = {"pipeline": str(pipeline), "generator_sha256": run.generator["sha256"], "counts": want,
              "coarse": coarse, "au_source": au_source, "au_jitter": au_jitter, "seed": seed, **run.sampler,
              "semantic_guidance": run.guidance.record if run.guidance else None, "split": split,
              "layout": run.layout.record if run.layout else None}
    # 3. the folder (opened by the main process), then this process's share of the missing faces
    writer = _open_writer(out, state, exprs, au_names, config, overwrite, resume, flush_every)
    if compile:
        pipe.compile_denoiser()
    missing = [f for f in plan if not writer.has(f.id)]
    todo = missing[state.process_index::state.num_processes]
    t0, done, first_batch_s = time.perf_counter(), 0, None
    bar = tqdm(total=len(plan), initial=len(plan) - len(missing), desc="generate", unit="face",
               disable=not state.is_main_process)
    try:
        for start in range(0, len(todo), batch_size):
            t_batch = time.perf_counter()
            batch = todo[start:start + batch_size]
            for record, image in run.faces(batch):
                writer.add(record, image)
            if first_batch_s is None:
                first_batch_s = time.perf_counter() - t_batch
                if compile and state.is_main_process:
                    print(f"first batch with compilation: {first_batch_s:.1f} s")
            done += len(batch)
            bar.update(len(batch) * state.num_processes)  # the other processes keep the same pace
            bar.set_postfix(faces_per_s=f"{done * state.num_processes / (time.perf_counter() - t0):.2f}")
    except BaseException:
        writer.close(complete=False)  # what is listed stays valid; --resume finishes it
        raise
    finally:
        bar.close()
    # 4. the main process counts every process's shards in and completes the folder
    stats = {"faces": len(plan), "this_run": len(missing), "processes": state.num_processes}
    if compile and first_batch_s is not None:
        stats["first_batch_with_compilation_s"] = round(first_batch_s, 1)
    _finish(out, state, writer, plan, stats, t0, preview, exprs)
    return out


def _wanted_counts(exprs: list[str], per_class: int | None, counts: dict[str, int] | None) -> dict[str, int]:
    """Faces per expression, in header order (``counts`` wins over ``per_class``); checked."""
    if counts is not None:
        unknown = [e for e in counts if canonical_expression(e) not in exprs]
        if unknown:
            raise ValueError(f"counts name {unknown}, which are not among the expressions {exprs}.")
        given = {canonical_expression(k): v for k, v in counts.items()}
        want = {e: int(given.get(e, 0)) for e in exprs}
    elif per_class is not None:
        want = {e: int(per_class) for e in exprs}
    else:
        raise ValueError("Give per_class or counts.")
    if min(want.values()) < 0 or sum(want.values()) == 0:
        raise ValueError(f"counts must be >= 0 and not all 0; got {want}.")
    return want


def check_options(batch_size: int, num_inference_steps: int | None, au_jitter: float,
                  guidance_scales: tuple[float | None, ...], semantic_guidance: float, au_guidance: float,
                  guidance_window: tuple[float, float], layout_strength: float, split: str, flush_every: int) -> None:
    """Refuse bad options before any model loads or any file is written, naming the option and its range."""
    import math

    from ..core.dataset import SPLIT_RE

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    need(batch_size >= 1, f"batch_size must be >= 1; got {batch_size}.")
    need(flush_every >= 1, f"flush_every must be >= 1; got {flush_every}.")
    need(num_inference_steps is None or num_inference_steps >= 1,
         f"num_inference_steps must be >= 1 (or left out for the generator's default); got {num_inference_steps}.")
    need(math.isfinite(au_jitter) and au_jitter >= 0, f"au_jitter is a standard deviation, >= 0; got {au_jitter}.")
    need(all(g is None or math.isfinite(g) for g in guidance_scales), "guidance scales must be finite numbers.")
    need(semantic_guidance >= 0 and au_guidance >= 0,
         f"semantic_guidance and au_guidance must be >= 0; got {semantic_guidance} and {au_guidance}.")
    lo, hi = guidance_window
    need(0.0 <= lo < hi <= 1.0, f"guidance_window is (start, end) with 0 <= start < end <= 1; got {guidance_window}.")
    need(0.0 < layout_strength <= 1.0, f"layout_strength must lie in (0, 1]; got {layout_strength}.")
    need(bool(SPLIT_RE.match(split)), f"split {split!r}: use a lower-case name such as train, val or test.")


def _sampler(pipe: Any, sampling: SamplerOptions, adapter_scale: float | None) -> dict[str, Any]:
    """The sampler settings recorded on every face (unset ones: the pipeline's saved defaults)."""
    d = pipe.generation_defaults()
    return {"scheduler": type(pipe.scheduler).__name__, **sampling.resolved(d),
            "au_adapter_scale": d["au_adapter_scale"] if adapter_scale is None else float(adapter_scale),
            "precision": resolve_precision(sampling.precision, pipe.device)}


@dataclass
class _Guidance:
    """Semantic guidance's models, settings and the record kept on every face."""

    classifier: Any
    au_estimator: Any
    scale: float
    window: tuple[float, float]
    au_weight: float
    record: dict[str, Any]

    def callback(self, targets: torch.Tensor, aus: torch.Tensor | None) -> Any:
        from ..generator.guidance import SemanticGuidance

        # AU guidance alone (semantic_guidance 0): the AU term steers with the default step
        return SemanticGuidance(self.classifier, targets, self.scale or AU_ONLY_STEP, self.window, self.au_estimator,
                                aus, self.au_weight, ce_weight=1.0 if self.scale else 0.0)


@dataclass
class _Layout:
    """Layout initialisation's real faces (name, loader) and strength, and the record kept in the config."""

    faces: list[tuple[str, Any]]
    strength: float
    record: dict[str, Any]


@dataclass
class _Run:
    """What every batch of one ``generate`` run needs."""

    pipe: Any
    exprs: list[str]
    au_names: tuple[str, ...] | None
    au_source: str
    split: str
    sampler: dict[str, Any]
    generator: dict[str, Any]
    guidance: _Guidance | None = None
    layout: _Layout | None = None

    def faces(self, batch: list[PlannedFace]) -> list[tuple[Record, Any]]:
        """Generate a batch of planned faces: (record, PIL image) pairs."""
        names = self.au_names
        prompts = [enrich_prompt(f.coarse, f.expression, None if f.aus is None else dict(zip(names, f.aus, strict=True)),
                                 seed=f.seed) for f in batch]
        aus = None if self.au_source == "none" else torch.tensor([f.aus for f in batch])
        kw: dict[str, Any] = {}
        if self.guidance is not None:
            callback = self.guidance.callback(torch.tensor([self.exprs.index(f.expression) for f in batch]), aus)
            kw.update(callback_on_step_end=callback, callback_on_step_end_tensor_inputs=callback.tensor_inputs)
        starts: list[int | None] = [None] * len(batch)
        if self.layout is not None:
            from ..generator.layout import invert, to_pipeline_images

            starts = [layout_pick(f.seed, len(self.layout.faces)) for f in batch]
            real = to_pipeline_images(self.pipe, [self.layout.faces[j][1]() for j in starts])
            kw["latents"] = invert(self.pipe, real, self.sampler["num_inference_steps"], self.layout.strength)
            kw["strength"] = self.layout.strength
        s = self.sampler
        images = self.pipe(prompts, aus=aus, num_inference_steps=s["num_inference_steps"],
                           guidance_scale_text=s["guidance_scale_text"], guidance_scale_au=s["guidance_scale_au"],
                           au_adapter_scale=s["au_adapter_scale"], precision=s["precision"],
                           generator=[torch.Generator().manual_seed(f.seed) for f in batch],
                           **kw).images
        out = []
        for f, prompt, image, j in zip(batch, prompts, images, starts, strict=True):
            meta = {"seed": f.seed, "index": f.index, "coarse": f.coarse, **s, "au_source": self.au_source,
                    "generator": self.generator, "guidance": self.guidance.record if self.guidance else None}
            if j is not None:
                meta["layout"] = {"face": self.layout.faces[j][0], "strength": self.layout.strength}
            out.append((Record(id=f.id, split=self.split, source="synfer-generate", expression=f.expression,
                               aus=f.aus, caption=prompt, meta=meta), image))
        return out


def _guidance(run: _Run, scale: float, window: tuple[float, float], model: str, au_weight: float,
              au_model: str | None) -> _Guidance | None:
    """Semantic guidance's classifier (and AU estimator), checked against the label set; None when off."""
    if not (scale or au_weight):
        return None
    classifier = ExpressionClassifier.from_pretrained(model).to(run.pipe.device)
    classifier.check_labels(run.exprs, "the generated label set")
    record = {"scale": scale, "window": list(window), "model": str(model),
              "model_sha256": files_sha256(resolve("classifier", model)), "au_weight": au_weight}
    estimator = None
    if au_weight:
        if run.au_names is None:
            raise ValueError("au_guidance needs a pipeline with an AU adapter (target AUs).")
        from ..annotate.au.distilled import DistilledAUEstimator

        estimator = DistilledAUEstimator.from_pretrained(au_model, au_set=AUSet(run.au_names)).to(run.pipe.device)
        record["au_model"] = str(au_model or "bundled")
    return _Guidance(classifier, estimator, scale, tuple(window), au_weight, record)


def _layout(run: _Run, layout: Path | None, strength: float, split: str, align: str | None) -> _Layout | None:
    """Layout initialisation's real faces (the strength checked first; aligned first with ``align``, a face
    landmarker model); None when off."""
    if layout is None:
        return None
    from ..generator.layout import align_faces, list_faces

    run.pipe.first_step(run.sampler["num_inference_steps"], strength, torch.zeros(1))  # validates the strength
    faces = list_faces([layout], split if (Path(layout) / "dataset.json").is_file() else None)
    record = {"source": str(layout), "strength": strength, "split": split}
    if align is not None:
        aligned = align_faces([(name, load()) for name, load in faces], align)
        faces = [(name, lambda crop=crop: crop) for name, crop, _ in aligned]
        record["aligned_with"] = str(align)
    return _Layout(faces, strength, {**record, "faces": len(faces)})


def _open_writer(out: Path, state: Any, exprs: list[str], au_names: tuple[str, ...] | None, config: dict[str, Any],
                 overwrite: bool, resume: bool, flush_every: int) -> DatasetWriter:
    """The main process opens (or resumes) the folder; the others then write shards of their own into it."""
    aus_set = AUSet(au_names) if au_names else None
    writer = None
    if state.is_main_process:
        writer = open_output(out, exprs, "generate", config, aus=aus_set, overwrite=overwrite, resume=resume,
                             licence="Synthetic faces from a synfer generator; see the generator's model card for "
                                     "the terms of the data it was trained on.")
    state.wait_for_everyone()
    if writer is None:
        writer = DatasetWriter(out, exprs, aus_set, mode="resume", shard_tag=f"p{state.process_index}",
                               write_header=False)
    writer.flush_every = flush_every
    return writer


def _finish(out: Path, state: Any, writer: DatasetWriter, plan: list[PlannedFace], stats: dict[str, Any],
            t0: float, preview: bool, exprs: list[str]) -> None:
    """Every process closes its shards; the main one adopts them, checks the plan is complete and marks it so."""
    if not state.is_main_process:
        writer.close(complete=False)
    state.wait_for_everyone()
    if state.is_main_process:
        writer.adopt_records()
        missed = [f.id for f in plan if not writer.has(f.id)]
        if missed:
            writer.close(complete=False)
            raise RuntimeError(f"{len(missed)} planned faces are missing from {out} (e.g. {missed[:3]}); rerun with "
                               "--resume.")
        writer.header.stats["generate"] = {**stats, "seconds_this_run": round(time.perf_counter() - t0, 1)}
        writer.close(complete=True)
        if preview:
            write_preview(out, exprs)
    state.wait_for_everyone()


def write_preview(out: Path, expressions: list[str], per_class: int = 8) -> Path:
    """``OUT/preview.png``: up to ``per_class`` faces per expression, one row each."""
    import numpy as np

    from ..core.images import save_grid

    folder = DatasetFolder(out)
    rows = []
    for e in expressions:
        recs = [r for r in folder.records() if r.expression == e][:per_class]
        if not recs:
            continue
        ims = [np.asarray(folder.load_image(r.image).convert("L"), dtype=np.float32) / 255 for r in recs]
        ims += [np.ones_like(ims[0])] * (per_class - len(ims))
        rows.append(torch.from_numpy(np.stack(ims))[:, None])
    return save_grid(torch.cat(rows), out / "preview.png", nrow=per_class)
