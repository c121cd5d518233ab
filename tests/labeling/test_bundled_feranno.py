"""The FERAnno head shipped inside the package: loadable by name, tied to the bundled generator's weights, and
better than chance by a wide margin on real FER+ validation faces."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from conftest import FERPLUS_DIR, needs_ferplus
from synfer.core.assets import KINDS, assets_dir, resolve
from synfer.labeling.annotators import FERAnnotator, load_annotator
from synfer.models.feranno import FERAnnoHead
from synfer.schema import FERPLUS8

NAME = "ferplus-feranno-mini"


def test_bundled_feranno_loads_with_its_generator():
    path = resolve("annotator", NAME)
    assert path.parent == assets_dir() / KINDS["annotator"].folder
    head = FERAnnoHead.from_pretrained(path)
    assert head.config.kind == "feranno" and head.config.label_names == list(FERPLUS8.names)
    card = (path / "README.md").read_text()
    assert "research use" in card and "generator_sha256" in card
    annotator = load_annotator(NAME)  # checks the bundled generator's hash against the head's
    assert isinstance(annotator, FERAnnotator)
    rng = np.random.default_rng(0)
    faces = [Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)) for _ in range(3)]
    probs = annotator(faces)
    assert probs.shape == (3, 8) and torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-4)
    assert torch.equal(probs, annotator(faces))  # fixed noise draw: the same face, the same label


@needs_ferplus
def test_bundled_feranno_on_real_validation_faces(tmp_path):
    """A regression check on the validation split (the test split is kept for reporting)."""
    from synfer.core.dataset import DatasetFolder
    from synfer.importers.ferplus import import_ferplus

    data = import_ferplus(FERPLUS_DIR, tmp_path / "ferplus", splits=["val"])
    folder = DatasetFolder(data)
    recs = [r for r in folder.records("val") if r.expression is not None][:400]
    probs = load_annotator(NAME)([folder.load_image(r.image) for r in recs])
    truth = np.array([FERPLUS8.names.index(r.expression) for r in recs])
    accuracy = float((probs.argmax(-1).numpy() == truth).mean())
    assert accuracy > 0.5, accuracy  # chance is 1/8; the majority class (neutral) alone is ~0.35
