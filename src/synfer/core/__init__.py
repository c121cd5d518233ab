"""The layer everything stands on: the dataset folder, provenance, assets, runtime, data loading, training."""

__version__ = "0.1.0"
