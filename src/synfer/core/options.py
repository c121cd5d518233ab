"""Option groups that several verbs share: one dataclass each, so a flag means the same thing on every verb.

A verb takes a group as one parameter (``run: RunOptions = RunOptions()``); the CLI shows its fields as
``--run.seed`` and also accepts the plain spelling (``--seed``), so command lines read the same on every verb.
A verb's own defaults are the group instance in its signature (``schedule: Schedule = Schedule(30, 128, 0.1)``).
:func:`bind` turns flat keyword options (a recipe in a YAML file, a benchmark's settings) into a verb's grouped
keywords, the same way the CLI does, and :func:`call` calls a verb with them.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Schedule:
    """The optimisation schedule of a training verb (each verb states its own defaults).

    Args:
        epochs: passes over the training data, as the verb defines an epoch.
        batch_size: examples per optimiser step, over all processes (each of N processes takes batch_size / N, so
            a run takes the same steps on the same faces whatever the process count).
        lr: peak learning rate (after any warm-up).
    """

    epochs: int
    batch_size: int
    lr: float

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}.")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr}.")


@dataclass(frozen=True)
class RunOptions:
    """How a training run starts, is reproduced and reports (the same on every training verb).

    Args:
        seed: seeds weights, data order, noise and augmentation; recorded with the run.
        limit: read at most this many examples per split (quick runs and tests).
        precision: ``auto`` (bf16 on GPUs and on CPUs with native bf16, else fp32), ``fp32``, ``bf16`` or
            ``fp16`` (CUDA): autocast of the forward passes (:mod:`synfer.core.runtime`); losses stay fp32.
        resume: continue the run in the output folder from its last finished epoch (refused if the options differ).
        overwrite: start again in an existing output folder (only one synfer wrote).
        report_to: also log each epoch's metrics through accelerate's trackers: ``tensorboard`` (under
            ``OUT/logs``; ``pip install synfer[tracking]``) or ``wandb``; ``none``: ``metrics.jsonl`` only.
    """

    seed: int = 0
    limit: int | None = None
    precision: str = "auto"
    resume: bool = False
    overwrite: bool = False
    report_to: str = "none"


@dataclass(frozen=True)
class SamplerOptions:
    """How a generator samples (the same on every sampling verb); unset values take the generator's defaults.

    Args:
        num_inference_steps: denoising steps (default: the generator's ``model_index.json``).
        guidance_scale_text: classifier-free guidance scale on the text (default: the generator's).
        guidance_scale_au: classifier-free guidance scale on the AUs (default: the generator's).
        device: ``auto`` (this process's GPU where there are GPUs, else the CPU), ``cpu``, ``cuda``, ``cuda:1`` ...
        precision: ``auto`` (bf16 on GPUs and on CPUs with native bf16, else fp32), ``fp32``, ``bf16``, ``fp16``
            (CUDA): the dtype of the denoiser's and decoder's passes (:mod:`synfer.core.runtime`).
    """

    num_inference_steps: int | None = None
    guidance_scale_text: float | None = None
    guidance_scale_au: float | None = None
    device: str = "auto"
    precision: str = "auto"

    def call_kwargs(self) -> dict[str, Any]:
        """Keywords of a :class:`~synfer.generator.pipeline.SynferPipeline` call (None: the generator's default)."""
        return {"num_inference_steps": self.num_inference_steps, "guidance_scale_text": self.guidance_scale_text,
                "guidance_scale_au": self.guidance_scale_au, "precision": self.precision}

    def resolved(self, defaults: Mapping[str, Any]) -> dict[str, Any]:
        """The three sampler settings, unset ones taken from ``defaults`` (the generator's)."""
        keys = ("num_inference_steps", "guidance_scale_text", "guidance_scale_au")
        return {k: defaults[k] if getattr(self, k) is None else getattr(self, k) for k in keys}


@dataclass(frozen=True)
class ImportOptions:
    """How an importer reads a source and writes the dataset folder (the same on every ``import-*`` verb).

    Args:
        skip_bad: skip malformed rows and missing or unreadable images, counting them in the folder's header,
            instead of failing at the first one.
        image_mode: convert images to ``L`` (8-bit grey) or ``RGB`` (default: keep each file's mode).
        image_size: resize faces to this square size, 8..4096 (default: keep each image's size).
        resume: continue an interrupted import into the same folder.
        overwrite: replace an existing output folder (only one synfer wrote).
    """

    skip_bad: bool = False
    image_mode: str | None = None
    image_size: int | None = None
    resume: bool = False
    overwrite: bool = False


def option_groups(fn: Callable[..., Any]) -> dict[str, type]:
    """``fn``'s parameters whose type is an option group (a dataclass): name -> class."""
    hints = typing.get_type_hints(fn)
    return {name: hint for name, hint in hints.items()
            if name != "return" and isinstance(hint, type) and dataclasses.is_dataclass(hint)}


def flat_aliases(fn: Callable[..., Any]) -> dict[str, str]:
    """Each group field's plain name -> ``group.field``. A name that is also a parameter of ``fn`` keeps its own
    meaning, and one that two groups share has no plain spelling (only ``group.field``)."""
    params = set(inspect.signature(fn).parameters)
    fields = [(f.name, group) for group, cls in option_groups(fn).items() for f in dataclasses.fields(cls)]
    names = [name for name, _ in fields]
    return {name: f"{group}.{name}" for name, group in fields if name not in params and names.count(name) == 1}


def bind(fn: Callable[..., Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """Flat keyword ``options`` -> ``fn``'s keywords: those naming a group's field are gathered into that group,
    whose other fields keep the defaults of ``fn``'s signature. Unknown names are refused, naming the verb."""
    params = inspect.signature(fn).parameters
    aliases = flat_aliases(fn)
    out: dict[str, Any] = {}
    grouped: dict[str, dict[str, Any]] = {}
    for key, value in options.items():
        if key in params:
            out[key] = value
        elif key in aliases:
            group, field = aliases[key].split(".")
            grouped.setdefault(group, {})[field] = value
        else:
            known = ", ".join(sorted([*params, *aliases]))
            raise ValueError(f"{fn.__name__} has no option {key!r}; options: {known}.")
    for group, values in grouped.items():
        base = out.get(group, params[group].default)
        out[group] = dataclasses.replace(base, **values)
    return out


def call(fn: Callable[..., Any], *args: Any, **options: Any) -> Any:
    """``fn(*args, ...)`` with flat keyword ``options`` bound as the CLI binds flags (:func:`bind`):
    ``call(train_fer, [data], out, epochs=5, seed=1)``."""
    return fn(*args, **bind(fn, options))
