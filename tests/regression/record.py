"""Record (or, from the test, recompute) the outputs that pin synfer's behaviour across refactors.

    python tests/regression/record.py        # rewrites tests/regression/pinned.json (only when behaviour is meant
                                             # to change: say so in the commit)

Pinned, all in fp32 on the CPU (bf16 kernels differ between CPU generations):
* ``faces``: the bundled generator at explicit settings (8 faces, one per FER+ expression, class-mean AU targets,
  two-row guidance 5/5, AU adapter scale 1, 8 DPM-Solver++ steps; 4 of them again with semantic guidance by the bundled classifier;
  2 of them DDIM-inverted and edited toward happiness): the SHA-256 of each face's uint8 pixels;
* ``classifier``: the bundled classifier's predicted class for every face of the FER+ test split (majority
  protocol), where ../shared/data is present.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

PINNED = Path(__file__).with_name("pinned.json")
#: CPU kernels' float reductions depend on the thread count: the pinned outputs were computed with 2 threads.
THREADS = 2
PROMPT = "A close-up photo of a person with a {} expression."


def _hashes(images: torch.Tensor) -> list[str]:
    u8 = (images.float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return [hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16] for x in u8]


@contextmanager
def pinned_threads() -> Iterator[None]:
    """torch on :data:`THREADS` threads inside (test workers may run on one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pinned_threads()
def faces() -> dict[str, list[str]]:
    """The bundled generator's faces at the pinned settings."""
    from synfer.generator.guidance import SemanticGuidance
    from synfer.generator.layout import invert
    from synfer.generator.pipeline import load_pipeline
    from synfer.models.classifiers import DEFAULT_CLASSIFIER, ExpressionClassifier
    from synfer.schema import FERPLUS8

    torch.manual_seed(0)
    pipe = load_pipeline("bundled")
    pipe.set_progress_bar_config(disable=True)
    targets = json.loads((_bundled_dir() / "au_targets.json").read_text())["per_expression"]
    names = list(FERPLUS8.names)
    prompts = [PROMPT.format(e) for e in names]
    aus = torch.tensor([targets[e] for e in names])
    kw: dict[str, Any] = {"num_inference_steps": 8, "guidance_scale_text": 5.0, "guidance_scale_au": 5.0,
                          "au_adapter_scale": 1.0, "precision": "fp32", "output_type": "pt"}
    plain = pipe(prompts, aus=aus, generator=[torch.Generator().manual_seed(i) for i in range(8)], **kw).images
    clf = ExpressionClassifier.from_pretrained(DEFAULT_CLASSIFIER)
    guide = SemanticGuidance(clf, torch.arange(4), 0.1, (0.6, 0.9))
    guided = pipe(prompts[:4], aus=aus[:4], generator=[torch.Generator().manual_seed(i) for i in range(4)],
                  callback_on_step_end=guide, callback_on_step_end_tensor_inputs=guide.tensor_inputs, **kw).images
    latents = invert(pipe, plain[:2], 8, 0.6)
    edited = pipe([PROMPT.format("happiness")] * 2, aus=aus[1:2].expand(2, -1), latents=latents, strength=0.6,
                  **kw).images
    return {"plain": _hashes(plain), "semantic_guidance": _hashes(guided), "edit": _hashes(edited)}


def _bundled_dir() -> Path:
    from synfer.core.assets import resolve

    return resolve("generator")


@pinned_threads()
def classifier_predictions(ferplus: Path, work: Path) -> str | None:
    """The bundled classifier's argmax on FER+ test (majority), as one digit per face; None without the data."""
    from synfer.classifiers.evaluate import predict
    from synfer.core.splits import load_split
    from synfer.importers.ferplus import import_ferplus
    from synfer.models.classifiers import DEFAULT_CLASSIFIER, ExpressionClassifier

    if not (ferplus / "FER2013Test" / "label.csv").is_file():
        return None
    data = import_ferplus(ferplus, work / "ferplus", splits=["test"])
    clf = ExpressionClassifier.from_pretrained(DEFAULT_CLASSIFIER)
    split = load_split(data, "test", expressions=clf.label_names)
    return "".join(str(int(k)) for k in predict(clf, split, torch.device("cpu")).argmax(1))


def record(ferplus: Path, work: Path) -> dict[str, Any]:
    return {"faces": faces(), "classifier_test_predictions": classifier_predictions(ferplus, work)}


if __name__ == "__main__":
    import tempfile

    root = Path(__file__).resolve().parents[3] / "shared" / "data" / "ferplus"
    with tempfile.TemporaryDirectory() as tmp:
        result = record(Path(sys.argv[1]) if len(sys.argv) > 1 else root, Path(tmp))
    PINNED.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {PINNED}")
