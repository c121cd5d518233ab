"""Every YAML preset under configs/ parses against its verb's signature (unknown keys or wrong types fail)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from synfer.cli import COMMANDS, main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_there_are_presets() -> None:
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_preset_parses(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = path.read_text().splitlines()[0]
    m = re.match(r"#\s*synfer\s+([a-z0-9-]+)", first)
    assert m and m.group(1) in COMMANDS, f"{path}: first line must say which verb reads it ('# synfer VERB ...')"
    with pytest.raises(SystemExit) as e:
        main([m.group(1), "--config", str(path), "--print_config"])
    assert e.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    for key, value in yaml.safe_load(path.read_text()).items():
        if isinstance(value, dict) and key in ("schedule", "run"):  # an option group: the verb's defaults fill it
            assert {k: printed[key][k] for k in value} == value, key
        else:
            assert printed[key] == value, key


def test_every_preset_is_referenced_by_a_doc_or_a_test() -> None:
    """A preset reproduces a shipped model or a documented recipe: some doc (README, docs/, a model card) or test
    names it."""
    root = Path(__file__).resolve().parents[1]
    texts = [p.read_text() for p in [root / "README.md", *(root / "docs").rglob("*.md"),
                                     *(root / "src" / "synfer" / "assets").rglob("README.md"),
                                     *(root / "tests").rglob("*.py")] if p.name != "test_configs.py"]
    for path in CONFIGS:
        rel = str(path.relative_to(root))
        assert any(rel in t for t in texts), f"{rel} is named by no doc or test; document it or remove it"
