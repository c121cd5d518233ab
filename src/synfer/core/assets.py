"""The asset registry: bundled models by kind and name, and the one resolver every loader uses.

``resolve(kind, name_or_path)`` takes a folder (checked for the kind's marker file) or the short name of a model
shipped in ``synfer/assets/<kind folder>/``; None (or ``"bundled"``) is the kind's default. A miss raises one
message that lists what is bundled and says how to make a folder of that kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AssetKind:
    """Where a kind of model lives in the package, what marks its folder, its default and how users make one."""

    folder: str
    marker: str
    default: str
    made_by: str


KINDS: dict[str, AssetKind] = {
    "generator": AssetKind("generators", "model_index.json", "ferplus-mini",
                           "`synfer train-generator` / `train-adapter` / `distill`, or SynferPipeline.save_pretrained"),
    "classifier": AssetKind("classifiers", "config.json", "ferplus-resnet-s", "`synfer train-fer`"),
    "annotator": AssetKind("annotators", "config.json", "ferplus-feranno-mini", "`synfer train-annotator`"),
    "au-estimator": AssetKind("au_estimators", "config.json", "ferplus-au-distilled", "`synfer train-au-estimator`"),
}


def assets_dir() -> Path:
    """``synfer/assets`` inside the installed package."""
    return Path(__file__).resolve().parents[1] / "assets"


def _kind(kind: str) -> AssetKind:
    if kind not in KINDS:
        raise ValueError(f"unknown asset kind {kind!r}; one of {', '.join(KINDS)}.")
    return KINDS[kind]


def bundled(kind: str) -> list[str]:
    """Short names of the bundled models of ``kind``."""
    k = _kind(kind)
    root = assets_dir() / k.folder
    return sorted(d.name for d in root.iterdir() if (d / k.marker).is_file()) if root.is_dir() else []


def resolve(kind: str, name_or_path: str | Path | None = None) -> Path:
    """The folder of a ``kind`` model: a path holding the kind's marker file, or a bundled short name (None or
    ``"bundled"``: the default one)."""
    k = _kind(kind)
    name = k.default if name_or_path is None or str(name_or_path) == "bundled" else str(name_or_path)
    for folder in (Path(name), assets_dir() / k.folder / name):
        if (folder / k.marker).is_file():
            return folder
    raise FileNotFoundError(
        f"No {kind} at {name_or_path!r}: give a folder with {k.marker} (made by {k.made_by}) or the name of a "
        f"bundled {kind}: {', '.join(bundled(kind)) or 'none in this install'}.")
