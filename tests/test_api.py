"""The top-level package exposes the public API, imported on first use."""

from __future__ import annotations

import subprocess
import sys

import synfer


def test_import_synfer_is_light() -> None:
    code = "import sys, synfer; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"


def test_every_public_name_resolves() -> None:
    for name in synfer.__all__:
        assert getattr(synfer, name) is not None
    from synfer.core.dataset import DatasetFolder
    from synfer.generator.pipeline import SynferPipeline

    assert synfer.SynferPipeline is SynferPipeline and synfer.DatasetFolder is DatasetFolder
