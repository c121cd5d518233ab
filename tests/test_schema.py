import pytest

from synfer import schema
from synfer.schema import (
    AFFECTNET8,
    BASIC7,
    FERPLUS8,
    RAFDB7,
    AUSet,
    DatasetHeader,
    OrderMismatchError,
    au_code,
    au_description,
    canonical_expression,
    check_same_order,
    get_expression_set,
    prototype_vector,
)


def test_schema_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, synfer.schema, synfer.core.dataset; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


@pytest.mark.parametrize("alias,canon", [("Happy", "happiness"), ("angry", "anger"), (" SAD ", "sadness"),
                                         ("surprised", "surprise"), ("fearful", "fear"), ("Neutral", "neutral"),
                                         ("contemptuous", "contempt"), ("disgusted", "disgust")])
def test_aliases(alias, canon):
    assert canonical_expression(alias) == canon


def test_unknown_expression_suggests():
    with pytest.raises(ValueError, match="happy"):
        canonical_expression("hapy")


def test_expression_sets_orders():
    assert FERPLUS8.names == ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
    assert BASIC7.names[0] == "anger" and BASIC7.names[6] == "neutral"
    assert RAFDB7.names[0] == "surprise" and RAFDB7.names[6] == "neutral"
    assert AFFECTNET8.names[1] == "happiness" and AFFECTNET8.names[7] == "contempt"
    assert FERPLUS8.index("happy") == 1
    with pytest.raises(ValueError, match="not in expression set"):
        BASIC7.index("contempt")
    assert get_expression_set(["happy", "sad"]).names == ("happiness", "sadness")
    assert get_expression_set(list(BASIC7.names)) is BASIC7


@pytest.mark.parametrize("ref,code", [(12, "AU12"), ("au1", "AU01"), ("AU01", "AU01"), ("AU12L", "AU12_L"),
                                      ("AU12_R", "AU12_R"), ("L12", "AU12_L"), ("26", "AU26")])
def test_au_codes(ref, code):
    assert au_code(ref) == code


def test_au_catalogue():
    assert au_code("AU45") == "AU45"
    with pytest.raises(ValueError, match="catalogue"):
        au_code("AU03")
    with pytest.raises(ValueError, match="not an action-unit"):
        au_code("smile")
    assert "lip corners pulled up" in au_description("AU12_L") and "left" in au_description("AU12_L")
    info = schema.au_info("AU06")
    assert info.name == "Cheek Raiser" and info.region == "cheeks" and info.lateral
    assert len(schema.OPENGRAPHAU41) == 41 and len(set(schema.OPENGRAPHAU41)) == 41


def test_prototypes_follow_emfacs():
    aus = AUSet.from_names([1, 2, 4, 5, 6, 7, 9, 12, 14, 15, 16, 20, 23, 26])
    happy = dict(zip(aus.names, prototype_vector("happy", aus), strict=True))
    assert happy["AU06"] > 0 and happy["AU12"] > 0 and sum(v > 0 for v in happy.values()) == 2
    surprise = dict(zip(aus.names, prototype_vector("surprise", aus), strict=True))
    assert {k for k, v in surprise.items() if v > 0} == {"AU01", "AU02", "AU05", "AU26"}
    contempt = dict(zip(aus.names, prototype_vector("contempt", aus), strict=True))
    assert contempt["AU12"] > 0 and contempt["AU14"] > 0  # unilateral prototype on bilateral columns
    assert not any(prototype_vector("neutral", aus))
    for expr, proto in schema.EMFACS_PROTOTYPES.items():
        assert expr in schema.CANONICAL_EXPRESSIONS
        assert all(au_code(c) == c and 0 < v <= 1 for c, v in proto.items())


def test_auset_rejects_bad():
    with pytest.raises(ValueError, match="canonical"):
        AUSet(("au1",))
    with pytest.raises(ValueError, match="Duplicate"):
        AUSet.from_names(["AU01", 1])


def test_order_check_message():
    check_same_order("expression", ["a", "b"], ["a", "b"], "x", "y")
    with pytest.raises(OrderMismatchError, match="different order") as e:
        check_same_order("expression", ["neutral", "happiness"], ["happiness", "neutral"], "model.json", "data/")
    assert "model.json" in str(e.value) and "data/" in str(e.value)
    with pytest.raises(OrderMismatchError, match="missing"):
        check_same_order("AU", ["AU01"], ["AU02"], "a", "b")


def test_header_round_trip():
    h = DatasetHeader(expressions=("happy", "sad"), aus=AUSet.from_names([1, 12]), licence="x", complete=True)
    assert h.expressions == ("happiness", "sadness")
    h2 = DatasetHeader.from_dict(h.to_dict())
    assert h2.to_dict() == h.to_dict()
    with pytest.raises(ValueError, match="not a synfer dataset header"):
        DatasetHeader.from_dict({"expressions": []})
    bad = h.to_dict() | {"schema_version": 99}
    with pytest.raises(ValueError, match="schema_version 99"):
        DatasetHeader.from_dict(bad)
