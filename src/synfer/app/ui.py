"""The page of ``synfer app``: three tabs (generate, edit a photo, make a dataset) over a :class:`Studio`.

Every handler turns a user's mistake into a message in the page (``gr.Error``) and an unexpected failure into a
message plus a traceback in the server's log, so the server keeps serving.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .studio import REGIONS, Studio, StudioError

log = logging.getLogger("synfer.app")
#: Faces one "make a dataset" run may ask for.
MAX_DATASET_FACES = 100_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def _messages(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Errors as messages in the page; the server keeps serving."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (StudioError, ValueError, OSError) as e:
            raise gr.Error(" ".join(str(e).split()) or type(e).__name__) from e
        except Exception as e:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"unexpected error ({type(e).__name__}); the server log has the details.") from e

    return wrapped


def au_chart(names: tuple[str, ...], target: list[float] | None, measured: np.ndarray | None) -> Image.Image:
    """Target vs measured AUs (mean over the faces), a pair of bars per AU, drawn directly with PIL (a chart
    library would take a third of the time of drawing the faces)."""
    from PIL import ImageDraw, ImageFont

    width, height, left, bottom, top = 40 + 30 * len(names), 230, 36, 36, 26
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=11)
    plot_h = height - bottom - top
    for tick in (0.0, 0.5, 1.0):  # intensity axis
        y = top + plot_h * (1 - tick)
        draw.line([(left, y), (width - 4, y)], fill="#dddddd")
        draw.text((4, y - 6), f"{tick:.1f}", fill="#555555", font=font)
    bars = [("target", target, "#8fa8c8"), ("measured", None if measured is None else measured.mean(0), "#d9822b")]
    for k, (label, values, colour) in enumerate(bars):
        x, y = width - 190 + 90 * k, height - 16  # the legend bottom right: the page's buttons sit on the top
        draw.rectangle([x, y, x + 10, y + 10], fill=colour)
        draw.text((x + 14, y - 1), label, fill="#333333", font=font)
        if values is None:
            continue
        for i, v in enumerate(values):
            x0 = left + 30 * i + 4 + 11 * k
            draw.rectangle([x0, top + plot_h * (1 - float(np.clip(v, 0, 1))), x0 + 10, top + plot_h], fill=colour)
    for i, name in enumerate(names):
        draw.text((left + 30 * i + 5, height - bottom + 6), name.removeprefix("AU"), fill="#333333", font=font)
    draw.text((width // 2 - 10, height - 16), "AU", fill="#333333", font=font)
    return image


def build(studio: Studio) -> Any:
    """The gr.Blocks of the app: a header and three tabs."""
    import gradio as gr

    info = studio.describe()
    with gr.Blocks(title="synfer studio", analytics_enabled=False) as page:
        gr.Markdown(f"## synfer studio\nGenerator `{info['pipeline']}` ({info['aus']} AUs, {info['device']}); "
                    f"expressions read by `{info['judge']}`, a classifier that does not guide.")
        with gr.Tab("Generate"):
            sliders, order = _generate_tab(studio)
        with gr.Tab("Edit a photo"):
            _edit_tab(studio, sliders, order)
        with gr.Tab("Make a dataset"):
            _dataset_tab(studio)
    return page


@dataclass(frozen=True)
class _SliderOrder:
    """The sliders are grouped by face region; the generator wants its own AU order."""

    au_names: tuple[str, ...]
    order: tuple[str, ...]  # the AU of each slider, top to bottom

    def to_generator(self, values: tuple[float, ...]) -> list[float]:
        return [float(values[self.order.index(name)]) for name in self.au_names]

    def to_sliders(self, vector: list[float]) -> list[float]:
        return [round(float(vector[self.au_names.index(name)]), 3) for name in self.order]


def _au_column(studio: Studio) -> tuple[dict[str, Any], list[Any], _SliderOrder]:
    """The Generate tab's left column: expression, description, presets, AUs from a face, a slider per AU."""
    import gradio as gr

    exprs = studio.expressions
    c: dict[str, Any] = {"expression": gr.Dropdown(exprs, value="happiness", label="expression"),
                         "coarse": gr.Textbox(label="description (optional)", placeholder="an old man with glasses")}
    with gr.Row():
        c["preset"] = gr.Radio(list(studio.presets(exprs[0])) or ["none"], label="AU preset", elem_id="preset")
        c["reset"] = gr.Button("Reset AUs", size="sm", elem_id="reset")
    with gr.Accordion("AUs from a face", open=False):
        c["face"] = gr.Image(type="pil", label="a face to start from", elem_id="face-upload")
        c["read"] = gr.Button("Read its AUs", size="sm", elem_id="read-aus")
    by_region = {r: [s for s in studio.sliders() if s.region == r] for r in REGIONS}
    sliders = []
    for region, group in by_region.items():
        if group:
            with gr.Accordion(f"{region} ({len(group)})", open=region in ("brows", "mouth")):
                sliders += [gr.Slider(0, 1, value=0, step=0.01, label=s.label, info=s.info, elem_id=f"au-{s.column}")
                            for s in group]
    order = _SliderOrder(studio.au_names, tuple(s.column for r in REGIONS for s in by_region[r]))
    return c, sliders, order


def _generate_tab(studio: Studio) -> tuple[list[Any], _SliderOrder]:
    """Controls, faces, the measured AUs and the judge's reading; returns the AU sliders and their order."""
    import gradio as gr

    defaults = studio.defaults
    with gr.Row():
        with gr.Column(scale=2):
            c, sliders, order = _au_column(studio)
        with gr.Column(scale=3):
            with gr.Row():
                steps = gr.Slider(1, 50, value=int(defaults["num_inference_steps"]), step=1, label="steps")
                n_faces = gr.Slider(1, 16, value=4, step=1, label="faces")
                seed = gr.Number(0, precision=0, label="seed", minimum=0)
            with gr.Row():
                text_scale = gr.Slider(0, 10, value=float(defaults["guidance_scale_text"]), step=0.5,
                                       label="text guidance")
                au_scale = gr.Slider(0, 10, value=float(defaults["guidance_scale_au"]), step=0.5, label="AU guidance")
                semantic = gr.Slider(0, 0.3, value=0.0, step=0.01, label="semantic guidance (0 = off)")
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="generate")
                live = gr.Checkbox(False, label="generate when a slider is released")
            outputs = [gr.Gallery(label="faces", columns=4, height=220, format="png", elem_id="gallery"),
                       gr.Image(label="AUs: target vs measured", elem_id="au-chart", interactive=False, format="png"),
                       gr.Label(num_top_classes=4, label="expression read by the judge", elem_id="probs"),
                       gr.Markdown(elem_id="status")]

    @_messages
    def draw(expr: str, text: str, _live: bool, s: float, n: int, st: int, ts: float, as_: float, sg: float,
             *values: float) -> tuple[Any, ...]:
        if s is None or s < 0:
            raise StudioError("seed must be a whole number >= 0.")
        faces = studio.generate(expr, order.to_generator(values) if studio.au_names else None, n=int(n),
                                seed=int(s), coarse=text or "", steps=int(st), text_scale=float(ts),
                                au_scale=float(as_), semantic_guidance=float(sg))
        chart = au_chart(studio.au_names, faces.target, faces.measured) if studio.au_names else None
        shown = [(im.resize((144, 144), Image.NEAREST), p) for im, p in zip(faces.images, faces.prompts, strict=True)]
        return (shown, chart, faces.probabilities,
                f"{len(faces.images)} faces in {faces.seconds:.2f} s (drawing, reading AUs and expressions)")

    def on_release(*args: Any) -> tuple[Any, ...]:
        return draw(*args) if args[2] else (gr.skip(),) * len(outputs)  # args[2]: the live checkbox

    @_messages
    def apply_preset(expr: str, name: str | None) -> list[float]:
        chosen = studio.presets(expr).get(name or "")
        if chosen is None:
            raise StudioError(f"no preset {name!r} for this generator.")
        return order.to_sliders(chosen)

    inputs = [c["expression"], c["coarse"], live, seed, n_faces, steps, text_scale, au_scale, semantic, *sliders]
    go.click(draw, inputs, outputs, api_name="generate")
    if sliders:
        gr.on([s.release for s in sliders], on_release, inputs, outputs, api_visibility="private")
        c["preset"].input(apply_preset, [c["expression"], c["preset"]], sliders, api_name="preset")
        c["reset"].click(lambda: [0.0] * len(sliders), None, sliders, api_visibility="private")
        c["read"].click(_messages(lambda photo: order.to_sliders(studio.aus_from_face(photo))), [c["face"]],
                        sliders, api_name="read_aus")
    return sliders, order


def _edit_tab(studio: Studio, sliders: list[Any], order: _SliderOrder) -> None:
    """A photo edited toward an expression (its preset AUs or the Generate tab's sliders), pasted back."""
    import gradio as gr

    with gr.Row():
        with gr.Column():
            photo = gr.Image(type="pil", label="photo", elem_id="photo")
            expression = gr.Dropdown(studio.expressions, value="happiness", label="toward expression")
            strength = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="strength")
            use_sliders = gr.Checkbox(False, label="use the AU sliders of the Generate tab (else the expression's "
                                                   "preset)")
            go = gr.Button("Edit", variant="primary", elem_id="edit")
        with gr.Column():
            before_after = gr.Gallery(label="face before / after", columns=2, height=260, elem_id="before-after")
            pasted = gr.Image(label="photo with the edit pasted back", interactive=False, elem_id="pasted")

    @_messages
    def do_edit(image: Any, expr: str, st: float, mine: bool, *values: float) -> tuple[Any, Any]:
        aus = None
        if studio.au_names:
            presets = studio.presets(expr)
            aus = order.to_generator(values) if mine else presets.get("class mean", presets["EMFACS prototype"])
        before, after, photo_out = studio.edit(image, expr, aus, float(st))
        return [(im.resize((160, 160), Image.BICUBIC), label) for im, label in ((before, "before"),
                                                                                 (after, "after"))], photo_out

    go.click(do_edit, [photo, expression, strength, use_sliders, *sliders], [before_after, pasted], api_name="edit")


def _dataset_tab(studio: Studio) -> None:
    """Counts per expression -> a dataset folder, its ImageFolder export and a zip; Stop ends the run."""
    import gradio as gr

    exprs = studio.expressions
    gr.Markdown("Faces per expression, written as a synfer dataset folder under the app's output folder, then "
                "exported as an ImageFolder and zipped. Stopping keeps what is done; the same settings continue it.")
    with gr.Row():
        counts = [gr.Number(0, precision=0, minimum=0, label=e, elem_id=f"count-{e}") for e in exprs]
    with gr.Row():
        name = gr.Textbox("my-faces", label="dataset name (letters, digits, - and _)", elem_id="ds-name")
        au_source = gr.Radio(["class mean", "EMFACS prototype", "none"], value="class mean", label="target AUs")
        semantic = gr.Slider(0, 0.3, value=0.0, step=0.01, label="semantic guidance (0 = off)")
        seed = gr.Number(0, precision=0, minimum=0, label="seed")
    with gr.Row():
        make = gr.Button("Make dataset", variant="primary", elem_id="make")
        stop = gr.Button("Stop", elem_id="stop")
    status, zip_file = gr.Markdown(elem_id="ds-status"), gr.File(label="ImageFolder zip", elem_id="ds-zip")

    def make_dataset(ds_name: str, source: str, sg: float, s: float, *numbers: float,
                     progress: Any = gr.Progress()) -> Iterator[tuple[str, Any]]:  # noqa: B008 (gradio's way)
        try:
            yield from dataset_job(studio, ds_name, source, sg, s, dict(zip(exprs, numbers, strict=True)), progress)
        except (StudioError, ValueError, OSError) as e:
            raise gr.Error(" ".join(str(e).split())) from e

    job = make.click(make_dataset, [name, au_source, semantic, seed, *counts], [status, zip_file],
                     api_name="make_dataset")
    stop.click(None, None, None, cancels=[job], api_visibility="private")


def dataset_job(studio: Studio, name: str, source: str, semantic: float, seed: float, counts: dict[str, Any],
                progress: Any = None) -> Iterator[tuple[str, Any]]:
    """Run ``synfer generate`` for the counts in a child process (so Stop ends it at once), report progress,
    then export an ImageFolder and zip it; yields ``(status text, zip path or None)``."""
    from ..core.dataset import DatasetFolder

    name = (name or "").strip()
    if not _NAME.match(name):
        raise StudioError(f"dataset name {name!r}: use 1-64 letters, digits, - and _ (starting with a letter or "
                          "digit).")
    wanted = {e: int(v or 0) for e, v in counts.items()}
    if any(v < 0 for v in wanted.values()):
        raise StudioError("counts must be >= 0.")
    total = sum(wanted.values())
    if total == 0:
        raise StudioError("every count is 0: ask for at least one face.")
    if total > MAX_DATASET_FACES:
        raise StudioError(f"{total} faces is more than the app makes at once ({MAX_DATASET_FACES}); use "
                          "`synfer generate` for large sets.")
    if seed is None or seed < 0:
        raise StudioError("seed must be a whole number >= 0.")
    folder = studio.out / "datasets" / name
    au = {"class mean": "auto", "EMFACS prototype": "prototype", "none": "none"}.get(source, "auto")
    cmd = [sys.executable, "-m", "synfer", "generate", str(folder), "--pipeline", str(studio.folder),
           "--counts", json.dumps({e: v for e, v in wanted.items() if v}), "--expressions", ",".join(wanted),
           "--au-source", au, "--seed", str(int(seed)), "--semantic-guidance", str(float(semantic)),
           "--flush-every", "16", "--device", str(studio.pipe.device)]
    if (folder / "dataset.json").is_file():
        cmd.append("--resume")
    folder.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None:
            done = _faces_in(folder)
            if progress is not None:
                progress((done, total), desc="faces", unit="faces")
            yield f"{done} / {total} faces in `{folder}`", None
            time.sleep(1.0)
        if proc.returncode != 0:
            err = (proc.stderr.read() if proc.stderr else "").strip().splitlines()
            raise StudioError(err[-1] if err else f"synfer generate stopped (exit {proc.returncode}).")
    finally:
        if proc.poll() is None:  # stopped from the page: end the child; the folder resumes next time
            proc.terminate()
            proc.wait(timeout=30)
    d = DatasetFolder(folder)
    yield f"{len(d)} faces written; exporting ...", None
    zip_path = export_zip(folder, studio.out / "exports" / name)
    yield f"{len(d)} faces in `{folder}`; ImageFolder zip: `{zip_path}`", str(zip_path)


def _faces_in(folder: Path) -> int:
    """Faces written so far (the shards' rows), 0 before the folder exists."""
    import pyarrow.parquet as pq

    total = 0
    for shard in folder.glob("records-*.parquet"):
        try:
            total += pq.ParquetFile(shard).metadata.num_rows
        except Exception:  # a shard being written right now
            continue
    return total


def export_zip(folder: Path, dest: Path) -> Path:
    """``synfer export-imagefolder`` of ``folder`` into ``dest`` (replaced), zipped beside it."""
    import shutil

    from ..core.export import export_imagefolder

    export_imagefolder(folder, dest, overwrite=dest.exists())
    return Path(shutil.make_archive(str(dest), "zip", root_dir=dest))
