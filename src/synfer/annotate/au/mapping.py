"""synfer's table from the 52 ARKit/MediaPipe blendshapes to FACS action units, as data.

The MediaPipe Face Landmarker's blendshape model scores 52 ARKit-style blendshapes in [0, 1]. They were designed
to drive avatars, not to code FACS, but most of them are named after one muscle action and correspond to one AU
well enough to serve as an AU intensity estimate (synfer's scale ``"0-1"``). This module holds that
correspondence as a table (:data:`AU_RULES`, one rule per AU column) and evaluates it on a batch
(:func:`blendshapes_to_aus`). It is synfer's own choice, not a validated AU detector.

Left and right
    FACS codes sides from the subject's point of view (``AU12_L``: the subject's left lip corner). MediaPipe
    follows ARKit and also names blendshapes from the subject's point of view: measured with the bundled models
    (tests/data/test_au.py), pulling together the eyelid landmarks of the eye on the image's *right* (landmark 263,
    the subject's left eye in an unmirrored photo) raises ``eyeBlinkLeft``, and raising the brow on the image's
    right raises ``browOuterUpLeft``. So ``...Left`` maps to ``_L`` and ``...Right`` to ``_R``. For mirrored
    (selfie-camera) images both conventions flip together, so the AUs describe the mirrored face.

The rules (``mean``/``max``/``min`` over sub-rules, ``sub``: a - b clipped at 0; results clipped to [0, 1]):

=========  ==============================================  ===================================================
column     rule                                            why
=========  ==============================================  ===================================================
AU01       browInnerUp                                     the same action (frontalis, medial part); ARKit has
                                                           no lateral inner-brow shape, so no AU01_L/_R
AU02       browOuterUp L/R                                 the same action (frontalis, lateral part)
AU04       browDown L/R                                    brows lowered (corrugator/depressor group)
AU05       eyeWide L/R                                     upper lid raised; this model's eyeWide stays small
                                                           (about 0.1-0.16 on surprised FER+ faces)
AU06       max(cheekSquint, min(eyeSquint, mouthSmile))    cheekSquint is the direct shape, but this model
           per side                                        almost never outputs it (MediaPipe issue #4450:
                                                           cheekSquint/noseSneer stay near 0). AU06 narrows the
                                                           eye from below while the cheeks rise; in a still
                                                           image that shows as eye narrowing *together with*
                                                           lifted lip corners, so the fuzzy AND of eyeSquint
                                                           and mouthSmile stands in for it. An inferred AU:
                                                           it cannot fire without AU12.
AU07       eyeSquint L/R                                   lids tightened; ARKit's eyeSquint ("contraction
                                                           around the eye") also responds to AU06
AU09       noseSneer L/R                                   the same action; near 0 from this model (see AU06),
                                                           kept so that a better estimator fills the column
AU10       mouthUpperUp L/R                                upper lip raised
AU12       mouthSmile L/R                                  lip corners pulled up and out
AU13       cheekPuff                                       FACS 1978 "Cheek Puffer" (the catalogue's name);
                                                           not in the default set (near 0, in no prototype)
AU14       mouthDimple L/R                                 lip corners tightened inward (dimples)
AU15       mouthFrown L/R                                  lip corners pulled down
AU16       mouthLowerDown L/R                              lower lip pulled down
AU17       mouthShrugLower                                 chin boss and lower lip pushed up
AU18       mouthPucker                                     lips pushed forward, narrowed
AU20       mouthStretch L/R                                lip corners pulled sideways
AU22       mouthFunnel                                     lips funneled outward
AU23       mean(mouthRollUpper, mouthRollLower)            AU23 thins the lip red and rolls its edges slightly
                                                           in; a landmark model sees the thinning as the lips
                                                           rolling in. mouthPress goes to AU24, whose pressing
                                                           together is what ARKit's mouthPress describes
AU24       mouthPress L/R                                  lips pressed together
AU25       sub(max(jawOpen, mouthLowerDown L/R,            lips apart: FACS scores AU25 whenever the lips part,
           mouthUpperUp L/R), mouthClose)                  by the jaw (AU26) or by strong AU10/AU16; ARKit's
                                                           mouthClose closes the lips over an open jaw
AU26       jawOpen                                         jaw dropped (AU27, a forced wide stretch, cannot be
                                                           told apart and is not produced)
AU28       min(mouthRollUpper, mouthRollLower)             lips sucked in: both lips rolled in fully; never
                                                           above AU23, the milder form
AU43       eyeBlink L/R                                    eyes closed (AU45 blink needs time, and AU46 wink
                                                           asymmetry; a still image shows closure: AU43)
=========  ==============================================  ===================================================

``L/R`` means: the lateral columns (``AU02_L`` ...) take the one side, the bilateral column their mean. Lateral
columns exist for the AUs that FACS and OpenGraphAU code by side and whose blendshapes are lateral: AU02, AU04,
AU06, AU10, AU12, AU14. gaze shapes (eyeLook*), jaw/mouth shifts (jawLeft, mouthLeft ...), jawForward,
mouthShrugUpper and ``_neutral`` map to no AU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ...schema import AUSet, au_code

#: The 52 outputs of ``face_blendshapes.tflite``, in model order (``_neutral`` first).
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight",
    "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
    "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)
_BS_INDEX = {n: i for i, n in enumerate(BLENDSHAPE_NAMES)}

#: A rule: a blendshape name, or ``(op, *args)`` with op ``mean`` / ``max`` / ``min`` over sub-rules, or
#: ``sub`` (first minus second, clipped at 0).
Rule = str | tuple
OPS = ("mean", "max", "min", "sub")


@dataclass(frozen=True)
class AURule:
    """One row of the table: how an AU column is computed, and why."""

    rule: Rule
    why: str


def mirror_rule(rule: Rule) -> Rule:
    """The same rule for the other side of the face (``...Left`` <-> ``...Right`` in every blendshape name)."""
    if isinstance(rule, str):
        if rule.endswith("Left"):
            return rule[:-4] + "Right"
        if rule.endswith("Right"):
            return rule[:-5] + "Left"
        return rule
    return (rule[0], *(mirror_rule(r) for r in rule[1:]))


def _sides(left_rule: Rule, why: str, number: int) -> dict[str, AURule]:
    """``AUxx_L`` (the rule), ``AUxx_R`` (mirrored) and ``AUxx`` (their mean) for a lateral AU."""
    code = f"AU{number:02d}"
    right = mirror_rule(left_rule)
    return {code: AURule(("mean", left_rule, right), why),
            f"{code}_L": AURule(left_rule, why + " (subject's left)"),
            f"{code}_R": AURule(right, why + " (subject's right)")}


def _pair(stem: str) -> Rule:
    return ("mean", f"{stem}Left", f"{stem}Right")


#: synfer's blendshape -> AU table (see the module docstring for the reasoning of every row).
AU_RULES: dict[str, AURule] = {
    "AU01": AURule("browInnerUp", "inner brow raiser = browInnerUp (central shape, no sides)"),
    **_sides("browOuterUpLeft", "outer brow raiser = browOuterUp", 2),
    **_sides("browDownLeft", "brow lowerer = browDown", 4),
    "AU05": AURule(_pair("eyeWide"), "upper lid raiser = eyeWide"),
    **_sides(("max", "cheekSquintLeft", ("min", "eyeSquintLeft", "mouthSmileLeft")),
             "cheek raiser = cheekSquint, or eye narrowing together with a smile (cheekSquint stays near 0)", 6),
    "AU07": AURule(_pair("eyeSquint"), "lid tightener = eyeSquint"),
    "AU09": AURule(_pair("noseSneer"), "nose wrinkler = noseSneer (near 0 from this model)"),
    **_sides("mouthUpperUpLeft", "upper lip raiser = mouthUpperUp", 10),
    **_sides("mouthSmileLeft", "lip corner puller = mouthSmile", 12),
    "AU13": AURule("cheekPuff", "cheek puffer (FACS 1978 name) = cheekPuff"),
    **_sides("mouthDimpleLeft", "dimpler = mouthDimple", 14),
    "AU15": AURule(_pair("mouthFrown"), "lip corner depressor = mouthFrown"),
    "AU16": AURule(_pair("mouthLowerDown"), "lower lip depressor = mouthLowerDown"),
    "AU17": AURule("mouthShrugLower", "chin raiser = mouthShrugLower"),
    "AU18": AURule("mouthPucker", "lip pucker = mouthPucker"),
    "AU20": AURule(_pair("mouthStretch"), "lip stretcher = mouthStretch"),
    "AU22": AURule("mouthFunnel", "lip funneler = mouthFunnel"),
    "AU23": AURule(("mean", "mouthRollUpper", "mouthRollLower"), "lip tightener = lips rolling in slightly"),
    "AU24": AURule(_pair("mouthPress"), "lip pressor = mouthPress"),
    "AU25": AURule(("sub", ("max", "jawOpen", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
                            "mouthUpperUpRight"), "mouthClose"),
                   "lips part = jaw open or a lip pulled away, less mouthClose"),
    "AU26": AURule("jawOpen", "jaw drop = jawOpen"),
    "AU28": AURule(("min", "mouthRollUpper", "mouthRollLower"), "lip suck = both lips rolled in"),
    "AU43": AURule(_pair("eyeBlink"), "eyes closed = eyeBlink"),
}

#: The default AU set of the MediaPipe estimator: every bilateral column except AU13 (22 AUs). It covers every
#: AU of synfer's EMFACS prototypes except the contempt sides, which show up in AU12/AU14 at half strength.
MEDIAPIPE_AUS = AUSet(("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15",
                       "AU16", "AU17", "AU18", "AU20", "AU22", "AU23", "AU24", "AU25", "AU26", "AU28", "AU43"))
#: Every column the table can produce: the 23 bilateral AUs, then the 12 lateral columns.
MEDIAPIPE_AUS_ALL = AUSet(tuple(sorted(c for c in AU_RULES if "_" not in c)) +
                          tuple(sorted(c for c in AU_RULES if "_" in c)))


def rule_blendshapes(rule: Rule) -> set[str]:
    """The blendshape names a rule reads."""
    if isinstance(rule, str):
        return {rule}
    return set().union(*(rule_blendshapes(r) for r in rule[1:]))


def check_rules(rules: Mapping[str, AURule] = AU_RULES) -> None:
    """Raise ValueError unless every column is a canonical AU name and every rule is well formed."""
    for code, row in rules.items():
        if au_code(code) != code:
            raise ValueError(f"AU rule {code!r}: write the column as {au_code(code)!r}.")
        _check(row.rule, code)


def _check(rule: Rule, code: str) -> None:
    if isinstance(rule, str):
        if rule not in _BS_INDEX:
            raise ValueError(f"AU rule {code}: unknown blendshape {rule!r}; names are those of BLENDSHAPE_NAMES.")
        return
    if not isinstance(rule, tuple) or not rule or rule[0] not in OPS:
        raise ValueError(f"AU rule {code}: {rule!r} is not a blendshape name or (op, ...) with op in {OPS}.")
    if len(rule) < 2 or (rule[0] == "sub" and len(rule) != 3):
        raise ValueError(f"AU rule {code}: {rule!r} has the wrong number of arguments.")
    for r in rule[1:]:
        _check(r, code)


def _evaluate(rule: Rule, bs: np.ndarray) -> np.ndarray:
    if isinstance(rule, str):
        return bs[:, _BS_INDEX[rule]]
    op, args = rule[0], [_evaluate(r, bs) for r in rule[1:]]
    if op == "mean":
        return np.mean(args, axis=0)
    if op == "max":
        return np.max(args, axis=0)
    if op == "min":
        return np.min(args, axis=0)
    return np.maximum(args[0] - args[1], 0.0)  # sub


def blendshapes_to_aus(blendshapes: np.ndarray, au_set: AUSet | Sequence[str] = MEDIAPIPE_AUS,
                       rules: Mapping[str, AURule] = AU_RULES) -> np.ndarray:
    """Map blendshape scores to AU intensities.

    Args:
        blendshapes: (N, 52) or (52,) scores in :data:`BLENDSHAPE_NAMES` order.
        au_set: the AU columns wanted, in order (each must have a rule).
        rules: the table (default synfer's :data:`AU_RULES`).

    Returns:
        (N, len(au_set)) float32 in [0, 1] (or (len(au_set),) for one vector).
    """
    names = au_set.names if isinstance(au_set, AUSet) else tuple(au_set)
    missing = [n for n in names if n not in rules]
    if missing:
        raise ValueError(f"No blendshape rule for {missing}; the MediaPipe table covers {list(rules)}.")
    bs = np.asarray(blendshapes, dtype=np.float32)
    single = bs.ndim == 1
    bs = bs[None] if single else bs
    if bs.ndim != 2 or bs.shape[1] != len(BLENDSHAPE_NAMES):
        raise ValueError(f"blendshapes must be (N, {len(BLENDSHAPE_NAMES)}); got shape {bs.shape}.")
    out = np.stack([_evaluate(rules[n].rule, bs) for n in names], axis=1) if names else \
        np.zeros((len(bs), 0), np.float32)
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    return out[0] if single else out
