"""Prompt enrichment (SynFER §3): a coarse description and a target expression become a detailed prompt.

The prompt is written by the same phrase builders as the training captions (:mod:`synfer.annotate.captions`), so the
generator meets at sampling time the kind of text it was trained on: "A close-up photo of a young woman with
curly hair with a happy expression, with lip corners pulled up and cheeks raised." When no target AUs are given,
the expression's EMFACS prototype (:data:`synfer.schema.EMFACS_PROTOTYPES`) supplies the AU words, as the
captions of real faces of that class mention their AUs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..schema import EMFACS_PROTOTYPES, canonical_expression
from .captions import SUBJECTS, TextGenerator, compose

_PHOTO_PREFIX = re.compile(r"^\s*(?:an?\s+)?(?:close-up\s+)?(?:photo|photograph|picture|image|portrait)\s+of\s+",
                           re.IGNORECASE)


@runtime_checkable
class PromptEnricher(Protocol):
    """Anything that turns (coarse description, expression, target AUs) into a detailed prompt."""

    def enrich(self, coarse: str, expression: str, aus: Mapping[str, float] | None = None, seed: int = 0,
               pose: Mapping[str, float] | None = None) -> str:
        """One prompt; the same arguments and seed give the same text."""
        ...


def subject_from_coarse(coarse: str) -> str:
    """The coarse description as the sentence's subject: "A photo of A young man." -> "a young man"."""
    text = _PHOTO_PREFIX.sub("", coarse.strip()).strip().rstrip(".").strip()
    if not text:
        return ""
    if text[0].isupper() and (len(text) == 1 or not text[1].isupper()) and text.split()[0].lower() in (
            "a", "an", "the", "someone", "somebody", "one"):
        text = text[0].lower() + text[1:]  # "A young man" -> "a young man"; names and acronyms stay
    return text


class TemplatePromptEnricher:
    """Detailed prompts in the style of :class:`~synfer.annotate.captions.TemplateCaptioner`.

    Args:
        au_threshold: target AUs below this intensity are not written.
        max_aus: at most this many AUs (strongest first).
        prototype_aus: without target AUs, describe the expression's EMFACS prototype AUs.
    """

    def __init__(self, au_threshold: float = 0.25, max_aus: int = 4, prototype_aus: bool = True) -> None:
        self.au_threshold = au_threshold
        self.max_aus = max_aus
        self.prototype_aus = prototype_aus

    def enrich(self, coarse: str, expression: str | Mapping[str, float], aus: Mapping[str, float] | None = None,
               seed: int = 0, pose: Mapping[str, float] | None = None) -> str:
        """The detailed prompt.

        Args:
            coarse: what the person looks like ("a young woman with curly hair"); "" for anyone.
            expression: the target expression (aliases accepted), or a label distribution ``{name: probability}``
                worded as the captions of soft-labelled faces are ("mostly contemptuous, a little neutral"); its
                most probable expression supplies the prototype AUs.
            aus: target AU intensities ``{column: value}``, or None for the EMFACS prototype.
            seed: picks the sentence pattern and the synonyms.
            pose: optional head pose in degrees (``yaw``, ``pitch``, ``roll``).
        """
        rng = random.Random(seed)
        subject = subject_from_coarse(coarse) or rng.choice(SUBJECTS)
        if isinstance(expression, Mapping):
            expression = {canonical_expression(k): float(v) for k, v in expression.items()}
            if not any(v > 0 for v in expression.values()):
                raise ValueError(f"expression probabilities {expression} are all zero.")
            top = max(expression, key=expression.__getitem__)
        else:
            expression = top = canonical_expression(expression)
        if aus is None and self.prototype_aus:
            aus = EMFACS_PROTOTYPES[top]
        return compose(subject, expression, aus, pose, rng, self.au_threshold, self.max_aus)


def enrich_prompt(coarse: str, expression: str | Mapping[str, float], aus: Mapping[str, float] | None = None,
                  seed: int = 0) -> str:
    """A detailed prompt from a coarse description and a target expression or label distribution
    (:class:`TemplatePromptEnricher` with its defaults)."""
    return TemplatePromptEnricher().enrich(coarse, expression, aus, seed)


PROMPT_INSTRUCTION = ("Rewrite the following description of a face as one detailed image prompt, keeping every "
                      "detail.\nDescription: {facts}\nPrompt:")


class LLMPromptEnricher:
    """Prompts rewritten by a text-generation LLM from the template prompt (an empty generation falls back to the
    template prompt and is counted in ``fallbacks``).

    Args:
        model: a local model folder or a cached hub id.
        instruction: prompt pattern with a ``{facts}`` slot.
        max_new_tokens, device: generation settings.
    """

    def __init__(self, model: str | Path, instruction: str = PROMPT_INSTRUCTION, max_new_tokens: int = 60,
                 device: str = "cpu") -> None:
        self.generator = TextGenerator(model, max_new_tokens, device)
        self.template = TemplatePromptEnricher()
        self.instruction = instruction
        self.fallbacks = 0

    def enrich(self, coarse: str, expression: str, aus: Mapping[str, float] | None = None, seed: int = 0,
               pose: Mapping[str, float] | None = None) -> str:
        facts = self.template.enrich(coarse, expression, aus, seed, pose)
        text = self.generator.generate(self.instruction.format(facts=facts), seed)
        if not text:
            self.fallbacks += 1
            return facts
        return text
