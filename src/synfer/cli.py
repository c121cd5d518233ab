"""The command line: one table of verb -> typed function. Run ``synfer VERB --help`` for any verb.

Functions are named as ``"module:function"`` and imported only when their verb runs, so ``synfer info`` does
not pay for importing torch. Every function's signature and docstring are its CLI (jsonargparse); every verb
also takes ``--config FILE.yaml``.
"""

from __future__ import annotations

from ._cli_util import run

COMMANDS: dict[str, str] = {
    # stage 1: import real data, inspect and reshape dataset folders
    "import-ferplus": "synfer.importers.ferplus:import_ferplus",
    "import-fer2013": "synfer.importers.fer2013:import_fer2013_csv",
    "import-imagefolder": "synfer.importers.imagefolder:import_imagefolder",
    "import-rafdb": "synfer.importers.rafdb:import_rafdb",
    "import-affectnet": "synfer.importers.affectnet:import_affectnet",
    "prepare": "synfer.annotate.prepare:prepare",
    "train-au-estimator": "synfer.annotate.au.distill:train_au_estimator",
    "info": "synfer.core.report:info",
    "validate": "synfer.core.report:validate",
    "filter": "synfer.core.ops:filter_dataset",
    "split": "synfer.core.ops:split_dataset",
    "merge": "synfer.core.ops:merge_datasets",
    "export-imagefolder": "synfer.core.export:export_imagefolder",
    "export-parquet": "synfer.core.export:export_parquet",
    "export-webdataset": "synfer.core.export:export_webdataset",
    # stage 2: the generator
    "train-vae": "synfer.generator.train_vae:train_vae",
    "train-generator": "synfer.generator.train_unet:train_generator",
    "train-adapter": "synfer.generator.train_adapter:train_adapter",
    "distill": "synfer.generator.distill:distill",
    "generate": "synfer.synthesize.generate:generate",
    "edit": "synfer.synthesize.edit:edit",
    "sample-grid": "synfer.synthesize.sample:sample_grid",
    "au-sweep": "synfer.synthesize.sample:au_sweep",
    # stage 4: labelling
    "train-annotator": "synfer.labeling.train_annotator:train_annotator",
    "label": "synfer.labeling.label:label",
    # stage 5: expression classifiers
    "train-fer": "synfer.classifiers.train:train_fer",
    "evaluate": "synfer.classifiers.evaluate:evaluate",
    "quality": "synfer.study.quality:quality",
    "probe": "synfer.classifiers.probe:probe",
    "experiment": "synfer.study.experiment:experiment",
    # the face studio in the browser
    "app": "synfer.app.serve:app",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``synfer`` console script and ``python -m synfer``."""
    return run(COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
