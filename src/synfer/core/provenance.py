"""Where a dataset folder or a model came from, and who may judge what.

* :func:`provenance_entry`: the record every stage adds to a header or writes as ``train_config.json``;
* :func:`files_sha256`: one hash over a model folder's weights (what "the same model" means here);
* guided-by and labelled-by: the weights hashes of the classifiers that guided a synthetic set's generation
  (``meta.guidance.model_sha256`` of its records) and of the annotators that voted its labels (the ``label``
  stage's ``annotator_sha256``); :func:`refuse_judge` refuses a judge that is either, since a classifier never
  judges faces it guided or labelled.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__


def provenance_entry(stage: str, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A provenance record for a header: stage, synfer and library versions, resolved config, time."""
    import numpy as np
    import pyarrow as pa

    versions = {"python": platform.python_version(), "numpy": np.__version__, "pyarrow": pa.__version__}
    for mod in ("torch", "diffusers", "transformers", "timm"):
        if mod in sys.modules:  # only what this process actually used
            versions[mod] = getattr(sys.modules[mod], "__version__", "?")
    return {"stage": stage, "synfer_version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": versions, "config": config, **extra}


def files_sha256(folder: Path, pattern: str = "**/*.safetensors", only: tuple[str, ...] | None = None) -> str:
    """One hash over every weights file of a folder (names and bytes, in sorted order); ``only``: just the files
    under these subfolders (e.g. a pipeline's ``("vae", "unet")``)."""
    h = hashlib.sha256()
    files = sorted(Path(folder).glob(pattern))
    if only is not None:
        files = [p for p in files if p.relative_to(folder).parts[0] in only]
    for p in files:
        h.update(str(p.relative_to(folder)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def guided_by(dataset: Path) -> set[str]:
    """The weights hashes of every classifier that guided the generation of a dataset folder's records."""
    from .dataset import DatasetFolder

    found = set()
    for raw in DatasetFolder(dataset, allow_incomplete=True).column("meta"):
        meta = json.loads(raw) if isinstance(raw, str) else (raw or {})
        g = (meta or {}).get("guidance") or {}
        if g.get("model_sha256"):
            found.add(g["model_sha256"])
    return found


def labelled_by(dataset: Path) -> set[str]:
    """The weights hashes of every annotator that voted a dataset folder's labels (``synfer label``)."""
    from .dataset import read_header

    found: set[str] = set()
    for entry in read_header(dataset).provenance:
        if entry.get("stage") == "label":
            found |= set((entry.get("config", {}).get("annotator_sha256") or {}).values())
    return found


def refuse_judge(dataset: Path, judge: str | Path, guidance: bool = True, labels: bool = True) -> None:
    """Raise if the classifier ``judge`` (folder or bundled name) guided ``dataset``'s generation or voted its
    labels: a judge must be independent of both."""
    from .assets import resolve

    sha = files_sha256(resolve("classifier", judge))
    if guidance and sha in guided_by(dataset):
        raise ValueError(f"{judge} guided the generation of {dataset} (same weights); it cannot judge that set. "
                         "Judge with an independent classifier (another backbone or seed: `synfer train-fer`).")
    if labels and sha in labelled_by(dataset):
        raise ValueError(f"{judge} labelled {dataset} (`synfer label`); judge with a classifier that was not an "
                         "annotator.")
