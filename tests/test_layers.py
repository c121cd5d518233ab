"""The package's layers import one way, and no two files import each other in a circle (imports inside functions
count): ``schema`` -> ``core`` -> ``models`` -> the stages in pipeline order -> ``study`` -> ``app`` -> the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
#: Lowest first; a module may import its own layer's modules and those of earlier layers only.
LAYERS = ("schema", "core", "models", "importers", "annotate", "generator", "synthesize", "labeling", "classifiers",
          "study", "app", "cli")
#: The package's top-level files and the layer they belong to.
TOP = {"synfer": "cli", "synfer.__main__": "cli", "synfer.cli": "cli", "synfer._cli_util": "cli",
       "synfer.schema": "schema"}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    if module in TOP:
        return TOP[module]
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        raise AssertionError(f"{module} is in no layer; put it in one of {LAYERS} (or list it in TOP)")
    return parts[1]


def imports(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the synfer modules it imports (module level or inside functions), resolved to files."""
    paths = {module_name(p, src): p for p in src.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for mod, path in paths.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    found.add(full if full in paths else target)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        edges[mod] = {m for m in found if m in paths and m != mod}
    return edges


def upward(edges: dict[str, set[str]]) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    return [f"{a} ({layer_of(a)}) imports {b} ({layer_of(b)})" for a, targets in sorted(edges.items())
            for b in sorted(targets) if rank[layer_of(b)] > rank[layer_of(a)]]


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), i.e. each import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_sits_in_a_layer() -> None:
    for mod in imports():
        layer_of(mod)


def test_imports_go_down_the_layers_only() -> None:
    bad = upward(imports())
    assert not bad, "imports going up a layer:\n" + "\n".join(bad)


def test_no_import_circles() -> None:
    found = circles(imports())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("planted, kind", [("from ..study.report import markdown", "up"),
                                           ("from .b import x", "circle")])
def test_the_checks_catch_a_planted_import(tmp_path: Path, planted: str, kind: str) -> None:
    """A planted upward import (core -> study) and a planted circle (a <-> b) fail the checks."""
    pkg = tmp_path / "synfer"
    for folder in ("core", "study"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "study" / "report.py").write_text("def markdown(): ...\n")
    (pkg / "core" / "b.py").write_text("def x(): ...\n\ndef y():\n    from .a import z\n")
    (pkg / "core" / "a.py").write_text(f"def z():\n    {planted}\n")
    edges = imports(tmp_path)
    if kind == "up":
        assert upward(edges) == ["synfer.core.a (core) imports synfer.study.report (study)"]
    else:
        assert circles(edges) == [["synfer.core.a", "synfer.core.b"]]
