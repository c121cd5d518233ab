"""Property-based: dataset folders and FER+ label files corrupted at random (hypothesis) give a clean error or a
valid result through the CLI, never a traceback or an unexpected error, and never a changed input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import tree_state, write_ferplus_fixture  # noqa: E402
from synfer.cli import main  # noqa: E402

ROWS = {"FER2013Train": [[10, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 8, 2, 0, 0, 0, 0, 0, 0, 0],
                         [0, 0, 9, 1, 0, 0, 0, 0, 0, 0]],
        "FER2013Test": [[0, 0, 0, 10, 0, 0, 0, 0, 0, 0]]}
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                    max_size=3), max_leaves=6)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pristine")
    src = write_ferplus_fixture(root / "ferplus", ROWS)
    assert main(["import-ferplus", str(src), str(root / "ds")]) == 0
    return {"ferplus": src, "ds": root / "ds"}


def contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_verbs(folder: Path, out: Path, capsys) -> None:
    """Every reading verb on ``folder``: exit 0 or 2 with a one-line error, the folder unchanged."""
    before = contents(folder)
    for argv in (["validate", str(folder)], ["info", str(folder)], ["export-parquet", str(folder), str(out / "pq")],
                 ["filter", str(folder), str(out / "f"), "--splits", "train"]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code in (0, 2), (argv, err)
        assert "Traceback" not in err and "unexpected error" not in err, (argv, err)
    assert contents(folder) == before


@SETTINGS
@given(key=st.sampled_from(["expressions", "aus", "provenance", "licence", "complete", "stats", "format",
                            "schema_version", "extra"]), value=json_values)
def test_corrupt_headers(pristine, tmp_path_factory, capsys, key, value) -> None:
    work = tmp_path_factory.mktemp("h")
    folder = work / "ds"
    shutil.copytree(pristine["ds"], folder)
    header = json.loads((folder / "dataset.json").read_text())
    header[key] = value
    (folder / "dataset.json").write_text(json.dumps(header))
    run_verbs(folder, work, capsys)


@SETTINGS
@given(target=st.sampled_from(["image", "shard", "header"]), offset=st.integers(0, 400),
       junk=st.binary(min_size=0, max_size=40), truncate=st.booleans())
def test_corrupt_files(pristine, tmp_path_factory, capsys, target, offset, junk, truncate) -> None:
    work = tmp_path_factory.mktemp("f")
    folder = work / "ds"
    shutil.copytree(pristine["ds"], folder)
    path = {"image": sorted((folder / "images").iterdir())[0], "shard": sorted(folder.glob("records-*"))[0],
            "header": folder / "dataset.json"}[target]
    data = path.read_bytes()
    offset = min(offset, len(data))
    data = data[:offset] + junk if truncate else data[:offset] + junk + data[offset + len(junk):]
    path.write_bytes(data)
    run_verbs(folder, work, capsys)


@SETTINGS
@given(row=st.integers(0, 2), text=st.text(max_size=30), encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]))
def test_corrupt_label_files(pristine, tmp_path_factory, capsys, row, text, encoding) -> None:
    work = tmp_path_factory.mktemp("l")
    src = work / "ferplus"
    shutil.copytree(pristine["ferplus"], src)
    label = src / "FER2013Train" / "label.csv"
    lines = label.read_text().splitlines()
    lines[row] = text
    try:
        label.write_bytes("\n".join(lines).encode(encoding))
    except UnicodeEncodeError:
        return
    before = tree_state(src)
    code = main(["import-ferplus", str(src), str(work / "out")])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert "Traceback" not in err and "unexpected error" not in err, err
    assert tree_state(src) == before
    if code == 2:
        assert "label.csv" in err or "FER2013Train" in err, err
