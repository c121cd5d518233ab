import pytest
import torch

from synfer.models.classifiers import ClassifierConfig, ExpressionClassifier, create_backbone
from synfer.schema import OrderMismatchError

NAMES = ["neutral", "happiness", "surprise"]


@pytest.mark.parametrize("arch,kwargs", [("fer_resnet_xs", {}), ("fer_resnet_s", {"stem_stride": 2}),
                                         ("fer_vgg13_s", {}), ("resnet10t", {})])
def test_timm_contract_and_round_trip(tmp_path, arch, kwargs):
    torch.manual_seed(0)
    clf = ExpressionClassifier(ClassifierConfig(arch, NAMES, input_size=(1, 32, 32), model_kwargs=kwargs)).eval()
    x = torch.rand(2, 1, 32, 32)
    feats = clf.forward_features(x)
    assert feats.ndim == 4 and feats.shape[0] == 2
    assert clf.forward_head(feats).shape == (2, 3)
    assert clf.embed(x).shape == (2, clf.forward_head(feats, pre_logits=True).shape[1])
    clf.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    again = ExpressionClassifier.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(clf(x), again(x))  # identical logits


def test_preprocess_any_size_and_channels():
    clf = ExpressionClassifier(ClassifierConfig("fer_resnet_xs", NAMES, input_size=(1, 24, 24))).eval()
    rgb = torch.rand(3, 3, 50, 40, requires_grad=True)
    out = clf(rgb)
    assert out.shape == (3, 3)
    out.sum().backward()  # differentiable end to end (guidance back-props through it)
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="channels"):
        clf(torch.rand(1, 2, 24, 24))


def test_label_order_check():
    clf = ExpressionClassifier(ClassifierConfig("fer_resnet_xs", NAMES))
    clf.check_labels(NAMES, "data")
    with pytest.raises(OrderMismatchError, match="different order"):
        clf.check_labels(["happiness", "neutral", "surprise"], "runs/x")


def test_unknown_backbone_and_missing_weights(tmp_path):
    with pytest.raises(ValueError, match="Unknown backbone 'nope'"):
        create_backbone("nope", 3)
    ExpressionClassifier(ClassifierConfig("fer_resnet_xs", NAMES)).save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="pickled"):
        ExpressionClassifier.from_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="name of a bundled classifier: ferplus-resnet-s"):
        ExpressionClassifier.from_pretrained(tmp_path / "none")
