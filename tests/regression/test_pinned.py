"""Behaviour pinned across refactors: the bundled generator's faces and the bundled classifier's FER+ test
predictions are bit-identical to those recorded in ``pinned.json`` (``record.py`` says how they were made)."""

from __future__ import annotations

import json

import pytest
from record import PINNED, classifier_predictions, faces

from conftest import FERPLUS_DIR, needs_ferplus


@pytest.fixture(scope="module")
def pinned() -> dict:
    return json.loads(PINNED.read_text())


def test_bundled_generator_draws_the_pinned_faces(pinned: dict) -> None:
    assert faces() == pinned["faces"]


@needs_ferplus
def test_bundled_classifier_makes_the_pinned_test_predictions(pinned: dict, tmp_path) -> None:
    got = classifier_predictions(FERPLUS_DIR, tmp_path)
    want = pinned["classifier_test_predictions"]
    assert got is not None and len(got) == len(want)
    assert got == want, f"{sum(a != b for a, b in zip(got, want, strict=True))} of {len(want)} predictions changed"
