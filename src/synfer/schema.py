"""Expression sets, the FACS action-unit catalogue, EMFACS prototypes and the dataset header type.

Pure Python (no torch, no numpy at import): every stage and every test can import it cheaply. One file past 400
lines on purpose: the AU catalogue, the expression sets and their prototypes are one table of data, read together.

Orders matter. An expression set or an AU list is an *ordered* tuple of names, stored in every dataset header and
every model config; :func:`check_same_order` refuses a mismatch instead of silently re-indexing.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# --------------------------------------------------------------------------------------------------------------
# Expressions
# --------------------------------------------------------------------------------------------------------------

#: Canonical expression names (FACS/EMFACS vocabulary, nouns as in FER+).
CANONICAL_EXPRESSIONS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")

#: Spellings found in the wild -> canonical name. Keys are lower-case.
EXPRESSION_ALIASES: dict[str, str] = {
    "neutral": "neutral", "neutrality": "neutral", "calm": "neutral", "ne": "neutral",
    "happiness": "happiness", "happy": "happiness", "joy": "happiness", "ha": "happiness", "smile": "happiness",
    "surprise": "surprise", "surprised": "surprise", "su": "surprise",
    "sadness": "sadness", "sad": "sadness", "sa": "sadness",
    "anger": "anger", "angry": "anger", "an": "anger",
    "disgust": "disgust", "disgusted": "disgust", "di": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear", "fe": "fear",
    "contempt": "contempt", "contemptuous": "contempt", "co": "contempt",
}


def canonical_expression(name: str) -> str:
    """Resolve an expression spelling ("Happy", "angry", "FEAR") to its canonical name.

    Raises:
        ValueError: naming the value and the closest known spellings.
    """
    key = str(name).strip().lower()
    if key in EXPRESSION_ALIASES:
        return EXPRESSION_ALIASES[key]
    close = difflib.get_close_matches(key, list(EXPRESSION_ALIASES), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown expression {name!r}.{hint} Known names: {', '.join(CANONICAL_EXPRESSIONS)} "
        f"(aliases such as 'happy', 'angry', 'sad' are accepted)."
    )


@dataclass(frozen=True)
class ExpressionSet:
    """An ordered set of expression classes.

    Attributes:
        name: short identifier used in configs (``"ferplus8"``).
        names: canonical names in label-index order.
        description: where this order comes from.
    """

    name: str
    names: tuple[str, ...]
    description: str = ""

    def __post_init__(self) -> None:
        bad = [n for n in self.names if n not in CANONICAL_EXPRESSIONS]
        if bad:
            raise ValueError(f"ExpressionSet {self.name!r}: non-canonical names {bad}; use canonical_expression().")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"ExpressionSet {self.name!r}: duplicate names in {self.names}.")

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """Label index of an expression (aliases accepted)."""
        canon = canonical_expression(name)
        if canon not in self.names:
            raise ValueError(
                f"Expression {name!r} ({canon}) is not in expression set {self.name!r} {list(self.names)}."
            )
        return self.names.index(canon)


#: FER+ (Barsoum et al. 2016) 8-class order, as in its label.csv columns.
FERPLUS8 = ExpressionSet("ferplus8", CANONICAL_EXPRESSIONS, "FER+ label.csv column order")
#: The 7 basic expressions in FER2013's original label order (0 angry ... 6 neutral).
BASIC7 = ExpressionSet(
    "basic7", ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"),
    "FER2013 fer2013.csv 'emotion' codes 0-6",
)
#: RAF-DB basic: labels 1-7 in list_patition_label.txt map to these, in this order.
RAFDB7 = ExpressionSet(
    "rafdb7", ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"),
    "RAF-DB basic list_patition_label.txt codes 1-7",
)
#: AffectNet-8: expression codes 0-7 of the AffectNet annotation CSVs (8-10 are None/Uncertain/Non-face).
AFFECTNET8 = ExpressionSet(
    "affectnet8", ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt"),
    "AffectNet training.csv/validation.csv 'expression' codes 0-7",
)
#: AffectNet-7: AffectNet-8 without contempt (the other common AffectNet protocol).
AFFECTNET7 = ExpressionSet("affectnet7", AFFECTNET8.names[:7], "AffectNet codes 0-6")

EXPRESSION_SETS: dict[str, ExpressionSet] = {s.name: s for s in (FERPLUS8, BASIC7, RAFDB7, AFFECTNET8, AFFECTNET7)}


def get_expression_set(name_or_names: str | Sequence[str]) -> ExpressionSet:
    """An expression set by short name (``"ferplus8"``) or from an explicit ordered list of names."""
    if isinstance(name_or_names, str):
        if name_or_names not in EXPRESSION_SETS:
            raise ValueError(f"Unknown expression set {name_or_names!r}; known: {', '.join(EXPRESSION_SETS)}.")
        return EXPRESSION_SETS[name_or_names]
    names = tuple(canonical_expression(n) for n in name_or_names)
    for s in EXPRESSION_SETS.values():
        if s.names == names:
            return s
    return ExpressionSet("custom", names, "user-given order")


# --------------------------------------------------------------------------------------------------------------
# FACS action units
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionUnit:
    """One FACS action unit.

    Attributes:
        number: FACS number (12 for AU12).
        name: FACS name ("Lip Corner Puller").
        description: what it looks like, in plain words.
        region: face region: brows, eyes, cheeks, nose, mouth, jaw.
        lateral: True where left/right variants are commonly coded (OpenGraphAU codes L/R for 1,2,4,6,10,12,14).
    """

    number: int
    name: str
    description: str
    region: str
    lateral: bool = False

    @property
    def code(self) -> str:
        """Column name, py-feat style: ``AU01``, ``AU12``."""
        return f"AU{self.number:02d}"


_AU_ROWS: tuple[tuple[int, str, str, str, bool], ...] = (
    (1, "Inner Brow Raiser", "inner brows raised", "brows", True),
    (2, "Outer Brow Raiser", "outer brows raised", "brows", True),
    (4, "Brow Lowerer", "brows lowered and drawn together", "brows", True),
    (5, "Upper Lid Raiser", "eyes widened", "eyes", False),
    (6, "Cheek Raiser", "cheeks raised", "cheeks", True),
    (7, "Lid Tightener", "eyelids tightened", "eyes", False),
    (9, "Nose Wrinkler", "nose wrinkled", "nose", False),
    (10, "Upper Lip Raiser", "upper lip raised", "mouth", True),
    (11, "Nasolabial Deepener", "nasolabial furrows deepened", "mouth", False),
    (12, "Lip Corner Puller", "lip corners pulled up", "mouth", True),
    (13, "Cheek Puffer", "cheeks puffed", "cheeks", False),
    (14, "Dimpler", "lip corners tightened into dimples", "mouth", True),
    (15, "Lip Corner Depressor", "lip corners pulled down", "mouth", False),
    (16, "Lower Lip Depressor", "lower lip pulled down", "mouth", False),
    (17, "Chin Raiser", "chin raised", "jaw", False),
    (18, "Lip Pucker", "lips puckered", "mouth", False),
    (19, "Tongue Show", "tongue shown", "mouth", False),
    (20, "Lip Stretcher", "lips stretched sideways", "mouth", False),
    (22, "Lip Funneler", "lips funneled", "mouth", False),
    (23, "Lip Tightener", "lips tightened", "mouth", False),
    (24, "Lip Pressor", "lips pressed together", "mouth", False),
    (25, "Lips Part", "lips parted", "mouth", False),
    (26, "Jaw Drop", "jaw dropped", "jaw", False),
    (27, "Mouth Stretch", "mouth stretched wide open", "jaw", False),
    (28, "Lip Suck", "lips sucked in", "mouth", False),
    (32, "Lip Bite", "lip bitten", "mouth", False),
    (38, "Nostril Dilator", "nostrils flared", "nose", False),
    (39, "Nostril Compressor", "nostrils compressed", "nose", False),
    (43, "Eyes Closed", "eyes closed", "eyes", False),
    (45, "Blink", "eyes blinking", "eyes", False),
    (46, "Wink", "one eye winking", "eyes", False),
)

#: The FACS catalogue, keyed by number.
AU_CATALOGUE: dict[int, ActionUnit] = {r[0]: ActionUnit(*r) for r in _AU_ROWS}

_AU_RE = re.compile(r"^\s*(?:AU)?\s*0*(\d{1,2})\s*(?:[_\-\s]?([LRlr]))?\s*$", re.IGNORECASE)
_AU_PREFIX_SIDE_RE = re.compile(r"^\s*([LRlr])\s*(?:AU)?\s*0*(\d{1,2})\s*$", re.IGNORECASE)


def au_code(value: str | int) -> str:
    """Normalise an AU reference to its column name.

    ``12`` / ``"AU12"`` / ``"au12"`` -> ``"AU12"``; ``"AU12L"`` / ``"AU12_L"`` / ``"L12"`` -> ``"AU12_L"``.

    Raises:
        ValueError: for anything that is not a catalogued AU (or a lateral variant of a lateral AU).
    """
    text = str(value)
    m = _AU_RE.match(text)
    side = None
    if m:
        number, side = int(m.group(1)), m.group(2)
    else:
        m2 = _AU_PREFIX_SIDE_RE.match(text)
        if not m2:
            raise ValueError(f"{value!r} is not an action-unit name; write it as 'AU12', '12' or 'AU12_L'.")
        side, number = m2.group(1), int(m2.group(2))
    if number not in AU_CATALOGUE:
        raise ValueError(
            f"AU{number} is not in synfer's FACS catalogue (known: {', '.join(map(str, AU_CATALOGUE))})."
        )
    code = AU_CATALOGUE[number].code
    if side:
        return f"{code}_{side.upper()}"
    return code


def au_info(code: str | int) -> ActionUnit:
    """The catalogue entry of an AU column name (lateral variants map to their AU)."""
    return AU_CATALOGUE[int(au_code(code)[2:4])]


def au_description(code: str | int) -> str:
    """Plain-words description; lateral variants get their side ("left lip corner pulled up")."""
    canon = au_code(code)
    text = au_info(canon).description
    if canon.endswith("_L"):
        return f"{text} (left)"
    if canon.endswith("_R"):
        return f"{text} (right)"
    return text


#: The 41 AUs OpenGraphAU predicts (27 main + 14 lateral), the AU set of SynFER's FEText.
OPENGRAPHAU41: tuple[str, ...] = tuple(
    AU_CATALOGUE[n].code for n in (1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24,
                                    25, 26, 27, 32, 38, 39)
) + tuple(f"AU{n:02d}_{s}" for n in (1, 2, 4, 6, 10, 12, 14) for s in ("L", "R"))


@dataclass(frozen=True)
class AUSet:
    """An ordered list of AU columns with the scale their values are on.

    Attributes:
        names: AU column names in vector order (``"AU01"``, ..., ``"AU12_L"``).
        scale: value scale; synfer's estimators write ``"0-1"`` (intensity as a probability-like score).
    """

    names: tuple[str, ...]
    scale: str = "0-1"

    def __post_init__(self) -> None:
        canon = tuple(au_code(n) for n in self.names)
        if canon != tuple(self.names):
            raise ValueError(f"AU names must be canonical column names, e.g. {list(canon)}; got {list(self.names)}.")
        if len(set(canon)) != len(canon):
            raise ValueError(f"Duplicate AU names in {list(self.names)}.")

    @classmethod
    def from_names(cls, names: Iterable[str | int], scale: str = "0-1") -> AUSet:
        return cls(tuple(au_code(n) for n in names), scale)

    def __len__(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict) -> AUSet:
        return cls(tuple(d["names"]), d.get("scale", "0-1"))


# --------------------------------------------------------------------------------------------------------------
# EMFACS prototypes
# --------------------------------------------------------------------------------------------------------------

#: EMFACS prototype AU combinations per expression, AU column -> intensity in [0, 1].
#: Intensities follow the FACS letter grades where EMFACS gives one (A trace ~0.2 ... E maximum 1.0);
#: unspecified grades get 0.6 (a clear "C"). Contempt is unilateral (R12A + R14A).
EMFACS_PROTOTYPES: dict[str, dict[str, float]] = {
    "neutral": {},
    "happiness": {"AU06": 0.6, "AU12": 0.8},
    "sadness": {"AU01": 0.6, "AU04": 0.6, "AU15": 0.6},
    "surprise": {"AU01": 0.6, "AU02": 0.6, "AU05": 0.4, "AU26": 0.6},
    "fear": {"AU01": 0.6, "AU02": 0.6, "AU04": 0.6, "AU05": 0.6, "AU07": 0.6, "AU20": 0.6, "AU26": 0.6},
    "anger": {"AU04": 0.6, "AU05": 0.6, "AU07": 0.6, "AU23": 0.6},
    "disgust": {"AU09": 0.6, "AU15": 0.6, "AU16": 0.6},
    "contempt": {"AU12_R": 0.2, "AU14_R": 0.2},
}


def prototype_vector(expression: str, aus: AUSet) -> list[float]:
    """The EMFACS prototype of ``expression`` as a vector in the order of ``aus``.

    A lateral prototype AU (``AU12_R``) also lights a bilateral column (``AU12``) at half its intensity when the
    set has no lateral column for it, since unilateral action shows up as weak bilateral action in such sets.
    """
    proto = EMFACS_PROTOTYPES[canonical_expression(expression)]
    out = [0.0] * len(aus)
    for code, value in proto.items():
        if code in aus.names:
            out[aus.names.index(code)] = value
        elif code[:4] in aus.names:  # lateral prototype, bilateral column
            out[aus.names.index(code[:4])] = max(out[aus.names.index(code[:4])], value / 2)
    return out


# --------------------------------------------------------------------------------------------------------------
# Order checks
# --------------------------------------------------------------------------------------------------------------


class OrderMismatchError(ValueError):
    """Two components disagree on the order of expression or AU names."""


def check_same_order(
    what: str, expected: Sequence[str], found: Sequence[str], expected_from: str, found_from: str
) -> None:
    """Raise :class:`OrderMismatchError` unless ``found`` equals ``expected`` element by element.

    Args:
        what: "expression" or "AU" (for the message).
        expected, found: the two ordered name lists.
        expected_from, found_from: where each list comes from (a path or a model name), named in the message.
    """
    if list(expected) == list(found):
        return
    missing = [n for n in expected if n not in found]
    extra = [n for n in found if n not in expected]
    if not missing and not extra:
        detail = "the same names in a different order"
    else:
        detail = f"missing {missing}, extra {extra}"
    raise OrderMismatchError(
        f"{what} order mismatch: {expected_from} has {list(expected)} but {found_from} has {list(found)} "
        f"({detail}). synfer never re-indexes silently: convert one side explicitly (e.g. `synfer filter "
        f"--expressions ...` to re-map a dataset) or use a model trained with the dataset's order."
    )


# --------------------------------------------------------------------------------------------------------------
# Dataset header
# --------------------------------------------------------------------------------------------------------------

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")


#: The header's fields and the JSON types each must have (None: may be null).
_HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "expressions": (list,), "aus": (dict, type(None)), "provenance": (list,), "licence": (str,),
    "complete": (bool,), "stats": (dict,),
}


def _check_header_types(d: dict, source: str) -> None:
    """Refuse a header field of the wrong JSON type, naming it (``"complete": "false"`` is a string, not false)."""
    if "expressions" not in d:
        raise ValueError(f"{source}: malformed header: the \"expressions\" list is missing.")
    for key, types in _HEADER_TYPES.items():
        if key in d and not isinstance(d[key], types):
            want = " or ".join("null" if t is type(None) else {list: "a list", dict: "an object", str: "a string",
                                                                bool: "true/false"}[t] for t in types)
            raise ValueError(f"{source}: header field \"{key}\" must be {want}; it is {json.dumps(d[key])[:60]}.")
    names = d["expressions"]
    if not names or not all(isinstance(e, str) and e for e in names) or len(set(names)) != len(names):
        raise ValueError(f"{source}: header field \"expressions\" must list distinct, non-empty names; it is "
                         f"{json.dumps(names)[:80]}.")
    if not all(isinstance(p, dict) for p in d.get("provenance", [])):
        raise ValueError(f"{source}: header field \"provenance\" must be a list of objects.")


@dataclass
class DatasetHeader:
    """Contents of a dataset folder's ``dataset.json``.

    Attributes:
        expressions: expression names in label order (``label_probs`` columns follow it).
        aus: AU columns and scale, or None when the folder carries no AU values yet.
        provenance: list of stage entries, oldest first: ``{"stage", "synfer_version", "config", "time", ...}``.
        licence: notes on the terms of the source data.
        complete: False while a writer is still adding records (a killed write stays False).
        stats: counters a writer keeps (records written, bad inputs skipped by reason, ...).
        schema_version: bumped when the folder layout changes.
    """

    expressions: tuple[str, ...]
    aus: AUSet | None = None
    provenance: list[dict] = field(default_factory=list)
    licence: str = ""
    complete: bool = False
    stats: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        self.expressions = tuple(canonical_expression(n) for n in self.expressions)
        if len(set(self.expressions)) != len(self.expressions):
            raise ValueError(f"Duplicate expression names in header: {list(self.expressions)}.")

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "format": "synfer-dataset",
            "complete": self.complete,
            "expressions": list(self.expressions),
            "aus": self.aus.to_dict() if self.aus is not None else None,
            "licence": self.licence,
            "stats": self.stats,
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "dataset.json") -> DatasetHeader:
        if not isinstance(d, dict):
            raise ValueError(f"{source}: a dataset header is a JSON object; this file holds a {type(d).__name__}.")
        if d.get("format") != "synfer-dataset":
            raise ValueError(f"{source}: not a synfer dataset header (missing \"format\": \"synfer-dataset\").")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"{source}: schema_version {version} but this synfer reads version {SCHEMA_VERSION}; "
                "upgrade synfer or re-import the data."
            )
        _check_header_types(d, source)
        try:
            return cls(
                expressions=tuple(d["expressions"]),
                aus=AUSet.from_dict(d["aus"]) if d.get("aus") else None,
                provenance=list(d.get("provenance", [])),
                licence=d.get("licence", ""),
                complete=d.get("complete", False),
                stats=dict(d.get("stats", {})),
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: malformed header: {e}") from e
