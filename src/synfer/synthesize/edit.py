"""``synfer edit``: change given faces' expressions by text and AUs, keeping who they are (layout initialisation).

Each face is DDIM-inverted under a class-agnostic condition to ``strength`` of the schedule
(:func:`synfer.generator.layout.invert`) and denoised from there under the target prompt and AUs. Low strength keeps
more of the face (identity, pose, lighting), high strength follows the target more. The result is a dataset folder
(one record per input face: target expression, target AUs, the prompt, and in ``meta`` the source, strength and
sampler) and ``OUT/preview.png`` with each source face above its edit. Ordinary photos are found and aligned first
with ``--align`` (:mod:`synfer.annotate.align`), and the edits pasted back into them (``OUT/pasted/``).

Example::

    synfer edit face1.png face2.png OUT --expression happiness --aus '{"AU12": 1.0}' --strength 0.6
    synfer edit runs/ferplus OUT --split test --limit 16 --expression surprise
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..annotate.align import paste_back
from ..annotate.prompts import enrich_prompt
from ..core.dataset import Record
from ..core.options import SamplerOptions
from ..core.provenance import files_sha256
from ..core.runtime import resolve_precision
from ..generator.au_targets import expression_au_targets
from ..generator.layout import align_faces, invert, read_faces, to_pipeline_images
from ..generator.pipeline import load_generator
from ..importers.common import open_output
from ..schema import FERPLUS8, AUSet, canonical_expression

#: ``edit --align``: the photos with their edit pasted back, one per record.
PASTED_DIR = "pasted"


def _faces(inputs: list[Path], split: str | None, limit: int | None, align: str | None, align_size: int
           ) -> tuple[list[tuple[str, Any]], dict[str, tuple[Any, Any]]]:
    """The faces to edit, (name, image); with ``align`` (a face landmarker model) the aligned crops of the photos
    with a face, and name -> (photo, alignment) for pasting the edits back."""
    faces = read_faces(inputs, split, limit)
    if align is None:
        return faces, {}
    aligned = align_faces(faces, align, align_size)
    photo = dict(faces)
    return [(name, crop) for name, crop, _ in aligned], {name: (photo[name], a) for name, _, a in aligned}


def _paste(path: Path, edit: Any, photo: Any, alignment: Any) -> dict[str, Any]:
    """Write the photo with ``edit`` pasted back where its crop came from; returns the crop's record."""
    path.parent.mkdir(exist_ok=True)
    paste_back(photo, edit, alignment).save(path)
    return alignment.to_dict()


def edit_faces(pipe: Any, faces: Sequence[Any], text: str, aus: list[float] | None, steps: int, strength: float,
               guidance_scale_text: float | None = None, guidance_scale_au: float | None = None,
               precision: str = "auto", source_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """PIL faces -> (the faces as the pipeline reads them, their edits), both (B, C, H, W) in [0, 1]: DDIM
    inversion to ``strength`` of a ``steps``-step schedule (under ``source_prompt``; "" = class-agnostic), then sampling back under
    ``text`` and the AU target ``aus`` (None: a generator without AUs)."""
    images = to_pipeline_images(pipe, list(faces))
    latents = invert(pipe, images, steps, strength, source_prompt)
    aus_t = None if aus is None else torch.tensor([aus] * len(faces))
    edited = pipe([text] * len(faces), aus=aus_t, latents=latents, strength=strength, num_inference_steps=steps,
                  guidance_scale_text=guidance_scale_text, guidance_scale_au=guidance_scale_au, precision=precision,
                  output_type="pt").images
    return images, edited


def target_aus(expression: str | None, aus: dict[str, float] | None, au_names: tuple[str, ...] | None,
               au_base: str, pipeline_dir: Path) -> list[float] | None:
    """The target AU vector: the expression's targets (``au_base``; zeros without an expression or with
    ``none``), then the values given in ``aus`` on top. None for a pipeline without an AU adapter."""
    if au_names is None:
        if aus:
            raise ValueError("aus were given but the generator has no AU adapter; edit by --expression / --prompt.")
        return None
    if expression is not None and au_base != "none":
        vector = expression_au_targets([expression], au_names, au_base, pipeline_dir)[0].tolist()
    else:
        vector = [0.0] * len(au_names)
    for name, value in (aus or {}).items():
        if name not in au_names:
            raise ValueError(f"AU {name!r} is not one of the generator's AUs: {', '.join(au_names)}.")
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"AU {name}={value}: intensities are in [0, 1].")
        vector[au_names.index(name)] = float(value)
    return vector


def edit(
    inputs: list[Path],
    out: Path,
    expression: str | None = None,
    prompt: str | None = None,
    aus: dict[str, float] | None = None,
    au_base: str = "auto",
    strength: float = 0.6,
    pipeline: str = "bundled",
    source_prompt: str = "",
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    expressions: list[str] | None = None,
    out_split: str = "train",
    compile: bool = False,
    preview: bool = True,
    overwrite: bool = False,
    align: str | None = None,
    align_size: int = 128,
    sampling: SamplerOptions = SamplerOptions(),
) -> Path:
    """Edit faces toward a target expression / AUs; write the edits as a dataset folder.

    Args:
        inputs: image files, folders of images, or dataset folders (see ``split``, ``limit``).
        out: the dataset folder to write.
        expression: the target expression (aliases accepted); gives the prompt and the base AU targets.
        prompt: the target prompt (default: enriched from ``expression`` and the target AUs).
        aus: AU intensities to set, e.g. '{"AU12": 1.0, "AU06": 0.8}', on top of the expression's targets.
        au_base: the expression's AU targets: ``auto`` (the generator's), ``prototype``, a prepared folder, a
            JSON file, or ``none`` (zeros: only ``aus`` are raised).
        strength: share of the schedule re-run from the inverted face, in (0, 1]: 0.3 keeps almost everything,
            0.6 changes the expression, 1.0 keeps only the coarse layout.
        pipeline: SynferPipeline folder or bundled name.
        source_prompt: the condition the faces are inverted under ("" = class-agnostic).
        split, limit: records of dataset-folder inputs (all splits by default), and at most this many faces.
        sampling: steps, guidance scales, device and precision (plain flags work: --num-inference-steps 4).
        seed: seeds the prompt enrichment (sampling from an inverted face is deterministic).
        batch_size: faces per pipeline call.
        expressions: the output's label set in header order (default FER+'s eight).
        out_split: the split written on every record.
        compile: compile the generator's UNet first (see ``generate``).
        preview: write ``OUT/preview.png`` (sources above edits, up to 16).
        overwrite: replace ``out``.
        align: MediaPipe's ``face_landmarker.task`` to find and align the face of each input first (ordinary
            photos): the crop is edited, its record's ``meta["aligned_crop"]`` says where it came from, and
            ``OUT/pasted/<id>.png`` is the photo with the edit pasted back in. Inputs without a face are left out.
        align_size: side of the aligned crops in pixels.

    Returns:
        the dataset folder.
    """
    out = Path(out)
    if expression is None and prompt is None and not aus:
        raise ValueError("Say what to edit toward: --expression, --prompt and/or --aus.")
    if sampling.num_inference_steps is not None and sampling.num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1 (or left out for the generator's default); got "
                         f"{sampling.num_inference_steps}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    exprs = [canonical_expression(e) for e in (expressions or FERPLUS8.names)]
    target = None if expression is None else canonical_expression(expression)
    if target is not None and target not in exprs:
        raise ValueError(f"expression {expression!r} is not in the label set {exprs}.")
    faces, photos = _faces(inputs, split, limit, align, align_size)
    pipe, pipe_dir = load_generator(pipeline, sampling.device)
    pipe.set_progress_bar_config(disable=True)
    precision = resolve_precision(sampling.precision, pipe.device)
    au_names = tuple(pipe.au_adapter.au_names) if pipe.au_adapter is not None else None
    vector = target_aus(target, aus, au_names, au_base, pipe_dir)
    au_map = None if vector is None else dict(zip(au_names, vector, strict=True))
    text = prompt if prompt is not None else enrich_prompt("", target or "neutral", au_map, seed=seed)
    defaults = pipe.generation_defaults()
    sampler = {"scheduler": type(pipe.scheduler).__name__,
               **sampling.resolved(defaults), "precision": precision}
    pipe.first_step(sampler["num_inference_steps"], strength, torch.zeros(1))  # validates strength early
    config = {"pipeline": str(pipeline), "generator_sha256": files_sha256(pipe_dir), "inputs": [str(p) for p in inputs],
              "expression": target, "prompt": text, "aus": vector, "strength": strength,
              "source_prompt": source_prompt, "align": None if align is None else str(align), **sampler}
    writer = open_output(out, exprs, "edit", config, aus=AUSet(au_names) if au_names else None, overwrite=overwrite)
    if compile:
        pipe.compile_denoiser()
    ids: dict[str, int] = {}
    pairs: list[torch.Tensor] = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(faces), desc="edit", unit="face")
    try:
        for start in range(0, len(faces), batch_size):
            chunk = faces[start:start + batch_size]
            images, edited = edit_faces(pipe, [im for _, im in chunk], text, vector, sampler["num_inference_steps"],
                                        strength, sampler["guidance_scale_text"], sampler["guidance_scale_au"],
                                        precision, source_prompt)
            pil = pipe.postprocess(edited, "pil")
            for (name, _), image in zip(chunk, pil, strict=True):
                stem = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:180]  # record ids: letters, digits, ._-
                n = ids[stem] = ids.get(stem, -1) + 1  # the same name twice (two folders) gets a suffix
                rid = f"edit-{stem}" if n == 0 else f"edit-{stem}-{n}"
                meta = {"source": name, "strength": strength, **sampler}
                if name in photos:
                    meta["aligned_crop"] = _paste(out / PASTED_DIR / f"{rid}.png", image, *photos[name])
                writer.add(Record(id=rid, split=out_split, source="synfer-edit", expression=target, aus=vector,
                                  caption=text, meta=meta), image)
            if preview and len(pairs) < 16:
                pairs += [torch.stack([a, b]) for a, b in zip(images.cpu(), edited.cpu(), strict=True)]
            bar.update(len(chunk))
    except BaseException:
        writer.close(complete=False)
        raise
    finally:
        bar.close()
    writer.header.stats["edit"] = {"faces": len(faces), "seconds": round(time.perf_counter() - t0, 1)}
    writer.close(complete=True)
    if preview:
        from ..core.images import save_grid

        pairs = pairs[:16]
        grid = torch.cat([torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])])
        save_grid(grid, out / "preview.png", nrow=len(pairs))
    return out
