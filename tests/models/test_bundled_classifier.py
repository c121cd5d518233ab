"""The classifier shipped inside the package: loadable by short name, offline, and accurate on real FER+ faces."""

import torch

from conftest import FERPLUS_DIR, needs_ferplus
from synfer.core.assets import KINDS, assets_dir, bundled
from synfer.models.classifiers import DEFAULT_CLASSIFIER, ExpressionClassifier
from synfer.schema import FERPLUS8


def test_bundled_classifier_loads_by_name():
    assert DEFAULT_CLASSIFIER in bundled("classifier")
    clf = ExpressionClassifier.from_pretrained(DEFAULT_CLASSIFIER)
    assert clf.label_names == list(FERPLUS8.names) and tuple(clf.config.input_size) == (1, 48, 48)
    size_mb = sum(p.stat().st_size for p in ((assets_dir() / KINDS["classifier"].folder) / DEFAULT_CLASSIFIER).iterdir()) / 2**20
    assert size_mb < 25
    card = ((assets_dir() / KINDS["classifier"].folder) / DEFAULT_CLASSIFIER / "README.md").read_text()
    assert "research use" in card and "FER+" in card
    with torch.no_grad():
        assert clf(torch.rand(2, 3, 96, 96)).shape == (2, 8)


@needs_ferplus
def test_bundled_classifier_on_real_validation_faces(tmp_path):
    """A regression check on the validation split (the test split is kept for reporting)."""
    from synfer.classifiers.evaluate import predict
    from synfer.core.splits import load_split
    from synfer.importers.ferplus import import_ferplus

    data = import_ferplus(FERPLUS_DIR, tmp_path / "ferplus", splits=["val"])
    val = load_split(data, "val", expressions=FERPLUS8.names, limit=800)
    probs = predict(ExpressionClassifier.from_pretrained(DEFAULT_CLASSIFIER), val, torch.device("cpu"))
    accuracy = (probs.argmax(1) == val.labels.numpy()).mean()
    assert accuracy > 0.8, accuracy


def test_bundled_judge_is_independent_of_the_guidance_model():
    """The second bundled classifier (the judge) differs from the default guidance model in architecture, seed and
    weights, so `synfer quality` / `evaluate` accept it on sets the default guided."""
    from synfer.core.provenance import files_sha256

    judge = "ferplus-vgg13s-judge"
    assert judge in bundled("classifier")
    a, b = ExpressionClassifier.from_pretrained(DEFAULT_CLASSIFIER), ExpressionClassifier.from_pretrained(judge)
    assert a.label_names == b.label_names and a.config.architecture != b.config.architecture
    assert a.config.extra.get("seed") != b.config.extra.get("seed")
    assert files_sha256((assets_dir() / KINDS["classifier"].folder) / judge) != files_sha256((assets_dir() / KINDS["classifier"].folder) / DEFAULT_CLASSIFIER)
    assert "research use" in ((assets_dir() / KINDS["classifier"].folder) / judge / "README.md").read_text()
    with torch.no_grad():
        assert b(torch.rand(2, 1, 48, 48)).shape == (2, 8)
