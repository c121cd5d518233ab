"""The command line: one table of verb -> typed function. Run ``synfer VERB --help`` for any verb.

Functions are named as ``"module:function"`` and imported only when their verb runs, so ``synfer info`` does
not pay for importing torch. Every function's signature and docstring are its CLI (jsonargparse); every verb
also takes ``--config FILE.yaml``.
"""

from __future__ import annotations

from ._cli_util import run

COMMANDS: dict[str, str] = {
    # stage 1: import real data, inspect and reshape dataset folders
    "import-ferplus": "synfer.data.ferplus:import_ferplus",
    "import-fer2013": "synfer.data.fer2013:import_fer2013_csv",
    "import-imagefolder": "synfer.data.imagefolder:import_imagefolder",
    "import-rafdb": "synfer.data.rafdb:import_rafdb",
    "import-affectnet": "synfer.data.affectnet:import_affectnet",
    "prepare": "synfer.data.prepare:prepare",
    "train-au-estimator": "synfer.data.au.distill:train_au_estimator",
    "info": "synfer.dataset_report:info",
    "validate": "synfer.dataset_report:validate",
    "filter": "synfer.dataset_ops:filter_dataset",
    "split": "synfer.dataset_ops:split_dataset",
    "merge": "synfer.dataset_ops:merge_datasets",
    "export-imagefolder": "synfer.export:export_imagefolder",
    "export-parquet": "synfer.export:export_parquet",
    "export-webdataset": "synfer.export:export_webdataset",
    # stage 2: the generator
    "train-vae": "synfer.diffusion.train_vae:train_vae",
    "train-generator": "synfer.diffusion.train_unet:train_generator",
    "train-adapter": "synfer.diffusion.train_adapter:train_adapter",
    "distill": "synfer.diffusion.distill:distill",
    "generate": "synfer.diffusion.generate:generate",
    "edit": "synfer.diffusion.edit:edit",
    "sample-grid": "synfer.diffusion.sample:sample_grid",
    "au-sweep": "synfer.diffusion.sample:au_sweep",
    # stage 4: labelling
    "train-annotator": "synfer.labeling.train_annotator:train_annotator",
    "label": "synfer.labeling.label:label",
    # stage 5: expression classifiers
    "train-fer": "synfer.fer.train:train_fer",
    "evaluate": "synfer.fer.evaluate:evaluate",
    "quality": "synfer.fer.quality:quality",
    "probe": "synfer.fer.probe:probe",
    "experiment": "synfer.fer.experiment:experiment",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``synfer`` console script and ``python -m synfer``."""
    return run(COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
