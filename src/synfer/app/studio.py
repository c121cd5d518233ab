"""The models and actions behind ``synfer app``, without any user interface.

:class:`Studio` loads a generator once (any SynferPipeline folder or bundled name), an AU estimator that reads
AUs back, a judge classifier that did not guide (its expression probabilities), the guidance classifier for
semantic guidance, and optionally MediaPipe's face landmarker for ordinary photos. Every action takes and returns
plain values (PIL images, lists, dicts) so the app's tests can call them without a browser, and every file it
writes lies under its output folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..annotate.au.distilled import DistilledAUEstimator
from ..annotate.prompts import enrich_prompt
from ..core.assets import resolve
from ..core.images import pil_batch
from ..core.provenance import files_sha256
from ..generator.au_targets import expression_au_targets
from ..generator.guidance import SemanticGuidance
from ..generator.pipeline import load_generator
from ..models.classifiers import DEFAULT_CLASSIFIER, ExpressionClassifier
from ..schema import FERPLUS8, au_description, au_info, canonical_expression
from ..synthesize.edit import edit_faces

#: The classifier that reads the expression of shown faces: not the one that guides them.
DEFAULT_JUDGE = "ferplus-vgg13s-judge"
#: Face regions in the order the sliders are grouped.
REGIONS = ("brows", "eyes", "cheeks", "nose", "mouth", "jaw")
#: Largest photo side the app works on (a bigger upload is scaled down first).
MAX_SIDE = 2048


class StudioError(ValueError):
    """Something the user can fix (shown in the page as a message)."""


@dataclass(frozen=True)
class Slider:
    """One AU slider: the generator's column, its FACS number and name, plain words, and its face region."""

    column: str
    label: str
    info: str
    region: str


@dataclass
class Faces:
    """Faces drawn by :meth:`Studio.generate` and what was read back from them."""

    images: list[Image.Image]
    prompts: list[str]
    target: list[float] | None  # the AU target (None: a generator without AUs)
    measured: np.ndarray | None  # (N, A) AUs the estimator reads back
    probabilities: dict[str, float]  # the judge's mean expression probabilities over the faces
    seconds: float


class Studio:
    """Load once, then draw, measure, edit and make datasets.

    Args:
        pipeline: a SynferPipeline folder or bundled name (``bundled``: the mini FER+ generator).
        out: the only folder the studio writes to (datasets, zips).
        judge: classifier (folder or bundled name) whose probabilities are shown; it must not be ``guide``.
        guide: classifier used for semantic guidance.
        au_model: distilled AU estimator that reads AUs back (None: the bundled one).
        face_model: MediaPipe ``face_landmarker.task`` to find and align faces in uploaded photos (None: uploads
            are taken as face crops).
        device: ``auto``, ``cpu``, ``cuda`` ...
    """

    def __init__(self, pipeline: str = "bundled", out: Path = Path("synfer-app"), judge: str = DEFAULT_JUDGE,
                 guide: str = DEFAULT_CLASSIFIER, au_model: str | None = None, face_model: Path | None = None,
                 device: str = "auto") -> None:
        if files_sha256(resolve("classifier", judge)) == files_sha256(resolve("classifier", guide)):
            raise StudioError(f"the judge {judge} is the guidance classifier; pick another judge.")
        self.out = Path(out)
        self.pipe, self.folder = load_generator(pipeline, device)
        self.au_names: tuple[str, ...] = tuple(self.pipe.au_adapter.au_names) if self.pipe.au_adapter else ()
        self.expressions = list(FERPLUS8.names)
        self.judge = ExpressionClassifier.from_pretrained(judge).to(self.pipe.device).eval()
        self.judge_name = resolve("classifier", judge).name
        self.guide_name = guide
        self._guide: ExpressionClassifier | None = None
        self.estimator = None
        if self.au_names:
            estimator = DistilledAUEstimator.from_pretrained(au_model)
            usable = [n for n in self.au_names if n in estimator.au_set.names]
            self.estimator, self._read = estimator.to(self.pipe.device), [estimator.au_set.names.index(n) for n in usable]
            self._shown = [self.au_names.index(n) for n in usable]  # generator columns the estimator reads
        self.aligner = None
        if face_model is not None:
            from ..annotate.align import FaceAligner

            size = self.pipe.vae.config.sample_size * 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
            self.aligner = FaceAligner(face_model, size=max(128, size))
        self.defaults = self.pipe.generation_defaults()

    # -- what the page shows -----------------------------------------------------------------------------------
    def sliders(self) -> list[Slider]:
        """One slider per generator AU, in the generator's order."""
        out = []
        for name in self.au_names:
            au = au_info(name)
            out.append(Slider(name, f"{name} {au.name}", au_description(name), au.region))
        return out

    def presets(self, expression: str) -> dict[str, list[float]]:
        """AU presets of an expression: the generator's per-class means (its ``au_targets.json``) and the EMFACS
        prototype."""
        if not self.au_names:
            return {}
        e = [canonical_expression(expression)]
        out = {"EMFACS prototype": expression_au_targets(e, self.au_names, "prototype", self.folder)[0].tolist()}
        if (self.folder / "au_targets.json").is_file():
            out["class mean"] = expression_au_targets(e, self.au_names, "auto", self.folder)[0].tolist()
        return out

    # -- actions -----------------------------------------------------------------------------------------------
    def generate(self, expression: str, aus: list[float] | None, n: int = 4, seed: int = 0, coarse: str = "",
                 steps: int | None = None, text_scale: float | None = None, au_scale: float | None = None,
                 semantic_guidance: float = 0.0) -> Faces:
        """``n`` faces of ``expression`` at AU target ``aus`` (generator order, 0..1), seeds ``seed .. seed+n-1``;
        measured by the AU estimator and the judge."""
        expression = self._expression(expression)
        if not 1 <= int(n) <= 16:
            raise StudioError(f"number of faces must be 1..16; got {n}.")
        target = self._target(aus)
        au_map = None if target is None else dict(zip(self.au_names, target, strict=True))
        seeds = [int(seed) + i for i in range(int(n))]
        prompts = [enrich_prompt(coarse.strip(), expression, au_map, seed=s) for s in seeds]
        aus_t = None if target is None else torch.tensor([target] * len(seeds))
        kw: dict[str, Any] = {}
        if semantic_guidance > 0:
            idx = torch.tensor([self.expressions.index(expression)] * len(seeds))
            callback = SemanticGuidance(self.guide(), idx, float(semantic_guidance), (0.6, 1.0))
            kw.update(callback_on_step_end=callback, callback_on_step_end_tensor_inputs=callback.tensor_inputs)
        t0 = time.perf_counter()
        images = self.pipe(prompts, aus=aus_t, num_inference_steps=steps, guidance_scale_text=text_scale,
                           guidance_scale_au=au_scale, generator=[torch.Generator().manual_seed(s) for s in seeds],
                           **kw).images
        measured, probs = self.measure(images)
        return Faces(images, prompts, target, measured, probs, time.perf_counter() - t0)

    @torch.no_grad()
    def measure(self, images: list[Image.Image]) -> tuple[np.ndarray | None, dict[str, float]]:
        """The AUs read back (N, A) in the generator's columns the estimator knows (others 0), and the judge's
        mean expression probabilities."""
        measured = None
        if self.estimator is not None:
            read = self.estimator.estimate(images).aus[:, self._read]
            measured = np.zeros((len(images), len(self.au_names)), np.float32)
            measured[:, self._shown] = read
        x = pil_batch(images, *self.judge.config.input_size).to(self.pipe.device)
        p = torch.softmax(self.judge(x).float(), -1).mean(0).cpu().tolist()
        return measured, dict(zip(self.judge.label_names, p, strict=True))

    def aus_from_face(self, photo: Image.Image) -> list[float]:
        """The AUs of an uploaded face (aligned first where the studio has a face model), as slider values."""
        if self.estimator is None:
            raise StudioError("this generator has no AU adapter: there are no AU sliders to fill.")
        face = self.face_crop(photo)
        measured, _ = self.measure([face])
        return [round(float(v), 3) for v in measured[0]]

    def face_crop(self, photo: Image.Image) -> Image.Image:
        """The aligned face of a photo (with a face model), else the upload itself; refuses a photo with no face."""
        return self._locate(photo)[1]

    def _locate(self, photo: Any) -> tuple[Image.Image, Image.Image, Any]:
        """(the checked photo, its face, where the face came from or None without a face model)."""
        photo = _checked(photo)
        if self.aligner is None:
            return photo, photo, None
        found = self.aligner.align(photo.convert("RGB"))
        if found is None:
            raise StudioError("no face found in the photo; upload a photo with one clearly visible face.")
        return photo, *found

    def edit(self, photo: Image.Image, expression: str, aus: list[float] | None, strength: float = 0.6,
             seed: int = 0) -> tuple[Image.Image, Image.Image, Image.Image | None]:
        """Edit the face of ``photo`` toward ``expression`` and AU target ``aus`` by DDIM inversion at
        ``strength`` (as ``synfer edit``): (face before, face after, the photo with the edit pasted back, or None
        without a face model)."""
        expression = self._expression(expression)
        if not 0.05 <= float(strength) <= 1.0:
            raise StudioError(f"strength must lie in 0.05..1; got {strength}.")
        photo, face, alignment = self._locate(photo)
        target = self._target(aus)
        au_map = None if target is None else dict(zip(self.au_names, target, strict=True))
        text = enrich_prompt("", expression, au_map, seed=int(seed))
        images, edited = edit_faces(self.pipe, [face], text, target, int(self.defaults["num_inference_steps"]),
                                    float(strength))
        before, after = (self.pipe.postprocess(x, "pil")[0] for x in (images, edited))
        pasted = None
        if alignment is not None:
            from ..annotate.align import paste_back

            pasted = paste_back(photo.convert(after.mode), after.resize(face.size), alignment)
        return before, after, pasted

    def guide(self) -> ExpressionClassifier:
        if self._guide is None:
            self._guide = ExpressionClassifier.from_pretrained(self.guide_name).to(self.pipe.device).eval()
            self._guide.check_labels(self.expressions, "the app's label set")
        return self._guide

    # -- checks ------------------------------------------------------------------------------------------------
    def _expression(self, expression: str) -> str:
        try:
            e = canonical_expression(expression)
        except (ValueError, KeyError) as err:
            raise StudioError(f"unknown expression {expression!r}; pick one of {', '.join(self.expressions)}.") \
                from err
        if e not in self.expressions:
            raise StudioError(f"unknown expression {expression!r}; pick one of {', '.join(self.expressions)}.")
        return e

    def _target(self, aus: list[float] | None) -> list[float] | None:
        if not self.au_names:
            return None
        values = [0.0] * len(self.au_names) if aus is None else [float(v) for v in aus]
        if len(values) != len(self.au_names) or not all(0.0 <= v <= 1.0 for v in values):
            raise StudioError(f"AU targets are {len(self.au_names)} values in 0..1 ({', '.join(self.au_names)}).")
        return values

    def close(self) -> None:
        """Release the face model (MediaPipe's graph must be closed before the interpreter exits)."""
        if self.aligner is not None:
            self.aligner.close()
            self.aligner = None

    def describe(self) -> dict[str, Any]:
        """What the page's header says about the loaded models."""
        return {"pipeline": self.folder.name, "aus": len(self.au_names), "judge": self.judge_name,
                "device": str(self.pipe.device), "defaults": self.defaults,
                "face_model": None if self.aligner is None else str(self.aligner.model_path)}


def _checked(photo: Any) -> Image.Image:
    """An uploaded image as PIL, scaled down when huge; anything else is refused with a message."""
    if photo is None:
        raise StudioError("no image: upload a photo or a face first.")
    if isinstance(photo, np.ndarray):
        photo = Image.fromarray(photo)
    if not isinstance(photo, Image.Image):
        raise StudioError("the upload is not an image; use a PNG or JPEG photo.")
    if max(photo.size) > MAX_SIDE:
        photo = photo.copy()
        photo.thumbnail((MAX_SIDE, MAX_SIDE))
    return photo.convert("RGB") if photo.mode not in ("L", "RGB") else photo
