"""sample-grid and au-sweep on a tiny saved pipeline: grid geometry, column seeds, AU targets from each source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synfer.core.dataset import DatasetWriter, Record
from synfer.generator.au_targets import expression_au_targets, write_au_targets
from synfer.schema import AUSet, OrderMismatchError
from synfer.synthesize.sample import au_sweep, sample_grid


def prepared(tmp_path: Path, names: tuple[str, ...] = ("AU01", "AU12")) -> Path:
    with DatasetWriter(tmp_path / "prep", ("neutral", "happiness"), aus=AUSet(names)) as w:
        for i, (e, a) in enumerate([("happiness", [0.1, 0.9]), ("happiness", [0.3, 0.7]), ("neutral", [0.2, 0.0]),
                                    ("neutral", [0.9, 0.9])]):
            w.add(Record(id=f"r{i}", split="train" if i < 3 else "val", source="t", expression=e, aus=a),
                  Image.new("L", (16, 16)))
    return tmp_path / "prep"


def cell(grid: np.ndarray, row: int, col: int, size: int = 16) -> np.ndarray:
    """One face of a grid written with 1 px padding."""
    top, left = 1 + row * (size + 1), 1 + col * (size + 1)
    return grid[top:top + size, left:left + size]


def test_grid_rows_are_expressions_and_columns_share_seeds(pipe_dir: Path, tmp_path: Path) -> None:
    out = sample_grid(tmp_path / "grid.png", pipeline=str(pipe_dir), expressions=["happy", "sad"],
                      per_expression=3, au_targets="prototype")
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 17 + 1, 3 * 17 + 1)  # 16 px faces, 1 px padding
    again = np.asarray(Image.open(sample_grid(tmp_path / "again.png", pipeline=str(pipe_dir),
                                              expressions=["happy", "sad"], per_expression=3, au_targets="prototype")))
    assert np.array_equal(grid, again)  # seeded
    # the same expression twice: the rows are equal column by column (a column is one seed), the columns differ
    same = np.asarray(Image.open(sample_grid(tmp_path / "same.png", pipeline=str(pipe_dir),
                                             expressions=["happy", "happy"], per_expression=3,
                                             au_targets="prototype")))
    assert np.array_equal(same[1:18], same[18:35])
    assert np.array_equal(same[1:18], grid[1:18])  # and the happy row does not depend on the rows below it
    assert not np.array_equal(cell(grid, 0, 0), cell(grid, 0, 1))
    assert not np.array_equal(cell(grid, 0, 0), cell(grid, 1, 0))  # another expression, the same seed


def test_au_targets_sources(pipe_dir: Path, tmp_path: Path) -> None:
    prep = prepared(tmp_path)
    names = ("AU01", "AU12")
    from_folder = expression_au_targets(["happiness", "neutral"], names, str(prep))
    assert torch.allclose(from_folder, torch.tensor([[0.2, 0.8], [0.55, 0.45]]))  # all splits' means
    write_au_targets(prep, pipe_dir)  # train split only
    auto = expression_au_targets(["happiness", "neutral"], names, "auto", pipe_dir)
    assert torch.allclose(auto, torch.tensor([[0.2, 0.8], [0.2, 0.0]]))
    proto = expression_au_targets(["happiness"], names, "prototype")
    assert torch.allclose(proto, torch.tensor([[0.0, 0.8]]))
    with pytest.raises(OrderMismatchError):
        expression_au_targets(["happiness"], ("AU12", "AU01"), str(prep))
    with pytest.raises(ValueError, match="no AU targets"):
        expression_au_targets(["fear"], names, "auto", pipe_dir)


def test_au_sweep(pipe_dir: Path, tmp_path: Path) -> None:
    out = au_sweep(tmp_path / "sweep.png", au="12", pipeline=str(pipe_dir), values=[0.0, 0.5, 1.0], seeds=2,
                   au_targets="prototype")
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 17 + 1, 3 * 17 + 1)
    for row in range(2):  # the swept AU changes the face along each row
        faces = [cell(grid, row, c).astype(int) for c in range(3)]
        assert np.abs(faces[0] - faces[2]).mean() > np.abs(faces[0] - faces[1]).mean() > 0
    assert not np.array_equal(cell(grid, 0, 0), cell(grid, 1, 0))  # rows are seeds
    flat = np.asarray(Image.open(au_sweep(tmp_path / "flat.png", au="12", pipeline=str(pipe_dir),
                                          values=[0.5, 0.5], seeds=1, au_targets="prototype")))
    assert np.array_equal(cell(flat, 0, 0), cell(flat, 0, 1))  # only the AU differs between columns
    assert np.array_equal(cell(flat, 0, 0), cell(grid, 0, 1))
    with pytest.raises(ValueError, match="not one of the adapter's AUs"):
        au_sweep(tmp_path / "x.png", au="AU04", pipeline=str(pipe_dir), au_targets="prototype")
