"""Cached, resumable steps of a long study: a cell is one step with named inputs, done once.

A cell's folder is ``WORK/cells/<name>-<key>``, ``key`` a hash of its inputs (options, and the outputs of the cells
it reads), and ``cell.json`` (written last) marks it done with its outputs. A rerun reuses every cell whose inputs
did not change, also one done under another name with the same inputs, and resumes an interrupted one (the steps
themselves are resumable).

``record``: a folder where every finished cell's ``cell.json`` is also copied (small: options, metrics, test
predictions), meant to be committed. On a machine where ``WORK`` is gone, a recorded cell counts as done, so a long
study spreads over many machines; where a later cell needs a recorded cell's *files* (a synthetic set, a model),
:meth:`Cells.run` with ``files=True`` computes it again (every step is seeded, so the same files should come back;
the recorded results stay the first run's and whether the recomputation reproduced them is recorded beside them).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.dataset import atomic_write_json

CELL_FILE = "cell.json"
#: Output keys that name files or folders a later cell may read.
FILE_KEYS = ("data", "model", "image", "gallery")
#: Output keys that time a step: a recomputation keeps the first run's and does not compare them.
COST_KEYS = ("images_per_s", "train_seconds", "seconds")


class CellMissing(LookupError):
    """A cell that would have to be computed, asked of :class:`Cells` that may only read done cells."""


class Cells:
    """The cache: ``run(name, inputs, produce)`` returns the outputs of a done cell or produces them.

    ``compute=False`` (a report from what is done): :meth:`run` raises :class:`CellMissing` instead of computing.
    """

    def __init__(self, work: Path, record: Path | None = None, compute: bool = True) -> None:
        self.root = Path(work) / "cells"
        self.root.mkdir(parents=True, exist_ok=True)
        self.record = None if record is None else Path(record)
        self.compute = compute
        self.log: list[dict[str, Any]] = []

    @staticmethod
    def key(inputs: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def _candidates(self, name: str, key: str) -> list[Path]:
        """Done-cell files for ``key``: this name first, then any other name, in WORK, then in the record."""
        own = [self.root / f"{name}-{key}" / CELL_FILE]
        others = [p for p in sorted(self.root.glob(f"*-{key}/{CELL_FILE}")) if p not in own]
        recorded = []
        if self.record is not None and self.record.is_dir():
            recorded = [self.record / f"{name}-{key}.json"]
            recorded += [p for p in sorted(self.record.glob(f"*-{key}.json")) if p not in recorded]
        return own + others + recorded

    def lookup(self, name: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
        """The done cell with exactly these inputs (under any name, in WORK or the record), or None."""
        key = self.key(inputs)
        same = json.loads(json.dumps(inputs, default=str))
        for path in self._candidates(name, key):
            if path.is_file() and (cell := json.loads(path.read_text()))["inputs"] == same:
                return cell
        return None

    def has_files(self, cell: dict[str, Any]) -> bool:
        """Whether a done cell's files are complete here: it finished in WORK (its ``cell.json`` is written last)
        and its outputs exist. A recorded cell whose recomputation was interrupted has a partial folder and no
        ``cell.json``: it is not ready, and :meth:`run` resumes it."""
        done_here = (self.root / f"{cell['name']}-{cell['key']}" / CELL_FILE).is_file()
        return done_here and all(Path(v).exists() for k, v in cell["outputs"].items()
                                 if k in FILE_KEYS and isinstance(v, str))

    def run(self, name: str, inputs: dict[str, Any], produce: Callable[[Path], dict[str, Any]],
            files: bool = False) -> dict[str, Any]:
        """The outputs of cell ``name`` with ``inputs``; ``produce(folder)`` computes them where the cell is not
        done, or (``files``) where the caller needs its files and they are missing."""
        key = self.key(inputs)
        folder = self.root / f"{name}-{key}"
        cell = self.lookup(name, inputs)
        if cell is not None and (not files or self.has_files(cell)):
            self.log.append({"cell": name, "key": key, "cached": True, "from": cell["name"]})
            return cell["outputs"]
        if not self.compute:
            where = f"{self.root}" + ("" if self.record is None else f" nor recorded in {self.record}")
            raise CellMissing(f"cell {name} ({key}) is not done in {where}" if cell is None else
                              f"cell {name} ({key}) is recorded but its files are not in {self.root}")
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        outputs = produce(folder)
        seconds = round(time.perf_counter() - t0, 1)
        done = {"name": name, "key": key, "inputs": inputs, "outputs": outputs, "seconds": seconds}
        if cell is not None:
            done = _recomputed(cell, done)
            outputs = done["outputs"]
        atomic_write_json(folder / CELL_FILE, done)
        if self.record is not None:
            self.record.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.record / f"{name}-{key}.json", done)
        self.log.append({"cell": name, "key": key, "cached": False, "seconds": seconds})
        return {**outputs}


def _recomputed(first: dict[str, Any], again: dict[str, Any]) -> dict[str, Any]:
    """A recorded cell computed again for its files: the new files, the first run's results and cost.

    The first run's results (metrics, test predictions) are the ones reported: a model is read on the test split
    once. Whether the recomputation reproduced them is kept (``recomputed_same``; the values that differ in
    ``recomputed_outputs``), so a step that is not deterministic shows. File paths and timings
    (:data:`COST_KEYS`) may differ and are not compared; paths into either run's cell folder nested in
    results compare equal.
    """
    old = _in_cell(json.loads(json.dumps(first["outputs"], default=str)), f"{first['name']}-{first['key']}")
    new = _in_cell(json.loads(json.dumps(again["outputs"], default=str)), f"{again['name']}-{again['key']}")
    differs = sorted(k for k in new if k not in FILE_KEYS + COST_KEYS and new[k] != old.get(k))
    # where the runs agree, the new values (their paths point into this WORK); where they differ, the first's
    outputs = {**first["outputs"], **{k: v for k, v in again["outputs"].items()
                                      if k in FILE_KEYS or k not in differs + list(COST_KEYS)}}
    done = {**again, "outputs": outputs, "seconds": first["seconds"], "recomputed_seconds": again["seconds"],
            "recomputed_same": not differs}
    if differs:
        done["recomputed_outputs"] = {k: new[k] for k in differs}
    return done


def _in_cell(value: Any, folder: str) -> Any:
    """``value`` (JSON) with every path into the cell folder ``folder`` made relative to it (``<cell>/...``)."""
    if isinstance(value, dict):
        return {k: _in_cell(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_in_cell(v, folder) for v in value]
    if isinstance(value, str) and folder in value:
        return "<cell>" + value.split(folder, 1)[1]
    return value
