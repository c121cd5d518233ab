"""Captions for faces: the expression (hard or soft), its AU cues in plain words, and the head pose.

SynFER's FEText captions come from a multimodal LLM. synfer's built-in :class:`TemplateCaptioner` writes varied
sentences from the same facts without any model, so a fresh install can caption a dataset offline; an
:class:`LLMCaptioner` rewrites those facts with any Hugging Face text-generation model. The phrase builders here
are shared with :mod:`synfer.annotate.prompts`, so that generation prompts read like training captions.

Sides: "left" and "right" are the subject's own (as in FACS ``AU12_L``), for AUs and for head turns.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..schema import au_code, au_description, canonical_expression

#: Expression -> adjectives (the first is the plain one).
ADJECTIVES: dict[str, tuple[str, ...]] = {
    "neutral": ("neutral", "calm", "expressionless"),
    "happiness": ("happy", "joyful", "cheerful"),
    "surprise": ("surprised", "astonished", "startled"),
    "sadness": ("sad", "sorrowful", "unhappy"),
    "anger": ("angry", "annoyed", "irritated"),
    "disgust": ("disgusted", "repulsed", "revolted"),
    "fear": ("fearful", "afraid", "frightened"),
    "contempt": ("contemptuous", "scornful", "disdainful"),
}
SUBJECTS = ("a person", "someone", "an individual")

#: Sentence patterns. Slots: subject / Subject, adj (adjective phrase), a_adj / A_adj (with its article), aus
#: (", with ..." or ""), pose (", head ..." or "").
TEMPLATES = (
    "A close-up photo of {subject} with {a_adj} expression{aus}{pose}.",
    "{Subject} looking {adj}{aus}{pose}.",
    "Portrait of {subject} who looks {adj}{aus}{pose}.",
    "{Subject} with {a_adj} face{aus}{pose}.",
    "{A_adj} facial expression on {subject}{aus}{pose}.",
    "The face of {subject} appearing {adj}{aus}{pose}.",
)
#: Patterns when the expression is unknown.
TEMPLATES_NO_EXPRESSION = (
    "A close-up photo of {subject}{aus}{pose}.",
    "Portrait of {subject}{aus}{pose}.",
)


@runtime_checkable
class Captioner(Protocol):
    """Anything that writes a caption from an expression, AU intensities and a head pose."""

    def caption(self, expression: str | Mapping[str, float] | None, aus: Mapping[str, float] | None = None,
                pose: Mapping[str, float] | None = None, seed: int = 0, image: Any = None) -> str:
        """One caption; the same arguments and seed give the same text."""
        ...


# -----------------------------------------------------------------------------------------------------------
# phrase builders (shared with prompts.py)
# -----------------------------------------------------------------------------------------------------------


def expression_phrase(expression: str | Mapping[str, float], rng: random.Random, min_share: float = 0.15) -> str:
    """An adjective phrase for a hard label ("surprised") or a label distribution ("mostly surprised, a little
    fearful").

    Args:
        expression: a name (aliases accepted) or ``{name: probability}``.
        rng: picks among synonyms.
        min_share: classes below this probability are not mentioned.
    """
    def adj(name: str) -> str:
        return rng.choice(ADJECTIVES[canonical_expression(name)])

    if isinstance(expression, str):
        return adj(expression)
    ranked = sorted(((float(p), canonical_expression(n)) for n, p in expression.items() if p > 0), reverse=True)
    if not ranked:
        raise ValueError(f"expression probabilities {dict(expression)} are all zero.")
    total = sum(p for p, _ in ranked)
    ranked = [(p / total, n) for p, n in ranked]
    (p1, top), rest = ranked[0], [(p, n) for p, n in ranked[1:3] if p >= min_share]
    if not rest:
        return adj(top)
    if p1 < 0.6:  # no clear winner: name the two on equal terms
        return f"partly {adj(top)}, partly {adj(rest[0][1])}"
    return ", ".join([f"mostly {adj(top)}", *(f"{'somewhat' if p >= 0.3 else 'a little'} {adj(n)}"
                                             for p, n in rest)])


def _au_words(code: str, value: float) -> str:
    base = au_description(code[:4])
    side = " on the left" if code.endswith("_L") else " on the right" if code.endswith("_R") else ""
    degree = " slightly" if value < 0.4 else " strongly" if value >= 0.7 else ""
    return f"{base}{side}{degree}"


def au_phrases(aus: Mapping[str, float], threshold: float = 0.25, max_aus: int = 4,
               asymmetry: float = 0.25) -> list[str]:
    """The active AUs in plain words, strongest first ("lip corners pulled up strongly", ...).

    Args:
        aus: ``{AU column: intensity in [0, 1]}``; lateral columns (``AU12_L``) are only mentioned for a side
            difference of at least ``asymmetry`` when their bilateral column is present, or on their own when it
            is not.
        threshold: AUs below it are not mentioned.
        max_aus: at most this many phrases.
    """
    canon = {au_code(k): float(v) for k, v in aus.items()}
    items: list[tuple[float, str]] = []
    for code, v in canon.items():
        if code.endswith(("_L", "_R")):
            if code[:4] not in canon and v >= threshold:
                items.append((v, _au_words(code, v)))
            continue
        if v < threshold:
            continue
        words = _au_words(code, v)
        left, right = canon.get(f"{code}_L"), canon.get(f"{code}_R")
        if left is not None and right is not None and abs(left - right) >= asymmetry:
            words += f" (more on the {'left' if left > right else 'right'})"
        items.append((v, words))
    items.sort(key=lambda t: -t[0])
    return [w for _, w in items[:max_aus]]


def join_words(parts: Sequence[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b and c"``."""
    parts = list(parts)
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def with_article(phrase: str) -> str:
    """``"angry"`` -> ``"an angry"``, ``"mostly happy"`` -> ``"a mostly happy"``."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def pose_phrase(pose: Mapping[str, float] | None, small: float = 8.0, large: float = 20.0) -> str:
    """Head pose in words ("head turned slightly to the left, tilted down"); "" when frontal or unknown.

    Args:
        pose: ``{"yaw", "pitch", "roll"}`` in degrees, signs as in
            :func:`synfer.annotate.au.base.head_pose_from_landmarks` (yaw > 0: turned to the subject's left).
        small: angles below this are not mentioned.
        large: angles from this on lose the word "slightly".
    """
    if not pose:
        return ""
    parts = []
    yaw, pitch, roll = (float(pose.get(k, 0.0)) for k in ("yaw", "pitch", "roll"))

    def degree(a: float) -> str:
        return "slightly " if abs(a) < large else ""

    if abs(yaw) >= small:
        parts.append(f"turned {degree(yaw)}to the {'left' if yaw > 0 else 'right'}")
    if abs(pitch) >= small:
        parts.append(f"tilted {degree(pitch)}{'up' if pitch > 0 else 'down'}")
    if abs(roll) >= small:
        parts.append(f"leaning {degree(roll)}to the {'left' if roll > 0 else 'right'}")
    return "head " + join_words(parts) if parts else ""


def compose(subject: str, expression: str | Mapping[str, float] | None, aus: Mapping[str, float] | None,
            pose: Mapping[str, float] | None, rng: random.Random, au_threshold: float = 0.25,
            max_aus: int = 4) -> str:
    """One sentence from the facts, with the template and synonyms drawn from ``rng``."""
    au_list = au_phrases(aus, au_threshold, max_aus) if aus else []
    au_clause = f", with {join_words(au_list)}" if au_list else ""
    pose_words = pose_phrase(pose)
    pose_clause = f"{';' if au_clause else ','} {pose_words}" if pose_words else ""
    if expression is None or (isinstance(expression, Mapping) and not any(expression.values())):
        template = rng.choice(TEMPLATES_NO_EXPRESSION)
        adj = ""
    else:
        template = rng.choice(TEMPLATES)
        adj = expression_phrase(expression, rng)
    a_adj = with_article(adj) if adj else ""
    return template.format(subject=subject, Subject=subject[:1].upper() + subject[1:], adj=adj, a_adj=a_adj,
                           A_adj=a_adj[:1].upper() + a_adj[1:], aus=au_clause, pose=pose_clause)


class TemplateCaptioner:
    """Varied natural captions from templates, no model needed.

    Args:
        au_threshold: AUs below this intensity are not mentioned.
        max_aus: at most this many AUs per caption (strongest first).
        subjects: the nouns for the person, drawn per caption.
    """

    def __init__(self, au_threshold: float = 0.25, max_aus: int = 4, subjects: Sequence[str] = SUBJECTS) -> None:
        self.au_threshold = au_threshold
        self.max_aus = max_aus
        self.subjects = tuple(subjects)

    def caption(self, expression: str | Mapping[str, float] | None, aus: Mapping[str, float] | None = None,
                pose: Mapping[str, float] | None = None, seed: int = 0, image: Any = None) -> str:
        """A caption such as "Someone looking mostly surprised, a little fearful, with inner brows raised
        strongly and jaw dropped." (``image`` is ignored: templates see only the facts.)"""
        rng = random.Random(seed)
        return compose(rng.choice(self.subjects), expression, aus, pose, rng, self.au_threshold, self.max_aus)

    def describe(self) -> dict:
        return {"captioner": "template", "au_threshold": self.au_threshold, "max_aus": self.max_aus}


# -----------------------------------------------------------------------------------------------------------
# LLM rewriting
# -----------------------------------------------------------------------------------------------------------


class TextGenerator:
    """A Hugging Face text-generation model, loaded lazily, sampled reproducibly per seed.

    Args:
        model: a local model folder, or a hub id already in the local cache (no download is attempted when
            ``HF_HUB_OFFLINE=1``).
        max_new_tokens: length limit of each generation.
        device: ``"cpu"``, ``"cuda"``, ... (the caller's choice; nothing is moved silently).
    """

    def __init__(self, model: str | Path, max_new_tokens: int = 60, device: str = "cpu") -> None:
        name = str(model)
        looks_local = Path(name).expanduser().exists() or name.startswith((".", "/", "~"))
        if looks_local and not (Path(name).expanduser() / "config.json").is_file():
            raise FileNotFoundError(f"{name}: no text-generation model there (config.json missing). Pass a folder "
                                    "saved with save_pretrained() or a hub id, e.g. --caption-model gpt2.")
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise ImportError("LLM captions need transformers: pip install transformers.") from e
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
            self.model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=False,
                                                              use_safetensors=True).to(device).eval()
        except OSError as e:
            raise FileNotFoundError(f"Cannot load text-generation model {name!r} ({e}). Pass a local folder or "
                                    "a hub id that is in the local cache.") from e
        self.max_new_tokens = max_new_tokens
        self.device = device

    def generate(self, prompt: str, seed: int) -> str:
        """The continuation of ``prompt`` (its first line, stripped), sampled with ``seed``."""
        import torch

        ids = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else \
            self.tokenizer.eos_token_id
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # seeded without touching the caller's RNG
            torch.manual_seed(seed)
            out = self.model.generate(**ids, do_sample=True, top_p=0.9, max_new_tokens=self.max_new_tokens,
                                      pad_token_id=pad)
        text = self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        return text.strip().split("\n")[0].strip()


CAPTION_INSTRUCTION = ("Rewrite the following description of a face as one fluent, detailed caption.\n"
                       "Description: {facts}\nCaption:")


class LLMCaptioner:
    """Captions rewritten by a text-generation LLM from the template caption's facts.

    The template caption is the LLM's input, so the facts (expression, AUs, pose) stay the same; an empty
    generation falls back to the template caption and is counted in ``fallbacks``.

    Args:
        model: a local model folder or a cached hub id (see :class:`TextGenerator`).
        instruction: prompt pattern with a ``{facts}`` slot.
        max_new_tokens, device: generation settings.
    """

    def __init__(self, model: str | Path, instruction: str = CAPTION_INSTRUCTION, max_new_tokens: int = 60,
                 device: str = "cpu") -> None:
        self.generator = TextGenerator(model, max_new_tokens, device)
        self.template = TemplateCaptioner()
        self.instruction = instruction
        self.model_name = str(model)
        self.fallbacks = 0

    def caption(self, expression: str | Mapping[str, float] | None, aus: Mapping[str, float] | None = None,
                pose: Mapping[str, float] | None = None, seed: int = 0, image: Any = None) -> str:
        facts = self.template.caption(expression, aus, pose, seed)
        text = self.generator.generate(self.instruction.format(facts=facts), seed)
        if not text:
            self.fallbacks += 1
            return facts
        return text

    def describe(self) -> dict:
        return {"captioner": "llm", "model": self.model_name, "instruction": self.instruction,
                "fallbacks": self.fallbacks}


def create_captioner(name: str, model: str | Path | None = None) -> Captioner:
    """``"template"`` or ``"llm"`` (the latter needs ``model``)."""
    if name == "template":
        return TemplateCaptioner()
    if name == "llm":
        if model is None:
            raise ValueError("captioner 'llm' needs a text-generation model: pass --caption-model PATH_OR_ID.")
        return LLMCaptioner(model)
    raise ValueError(f"Unknown captioner {name!r}; choose template or llm.")
