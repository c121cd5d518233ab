"""Dataset folders that cannot leak, corrupt or lose data: containment, one writer at a time, --overwrite that
replaces only synfer's own folders, refused operations that change nothing.

Each test tries a class of hostile or broken input the way a user (or an attacker) would, through the verbs'
Python functions and the CLI, and checks that nothing outside the named folders is read, written or deleted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import tree_state
from synfer.cli import main
from synfer.core.dataset import LOCK_FILE, DatasetError, DatasetFolder, DatasetWriter, Record
from synfer.core.export import export_imagefolder, export_parquet, export_webdataset
from synfer.core.ops import filter_dataset

EXPR = ("neutral", "happiness")


def small_folder(path: Path, n: int = 4) -> Path:
    from synfer.core.provenance import provenance_entry

    with DatasetWriter(path, EXPR) as w:
        w.add_provenance(provenance_entry("import-test", {}))
        for i in range(n):
            w.add(Record(f"r{i}", "train", "test", EXPR[i % 2]), Image.new("L", (8, 8), 40 * i))
    return path


def point_record_at(folder: Path, record_id: str, image: str) -> None:
    """Rewrite the records so that ``record_id``'s image entry is ``image`` (a hand-edited or hostile folder)."""
    (shard,) = folder.glob("records-*.parquet")
    table = pq.read_table(shard)
    rows = table.to_pylist()
    for r in rows:
        if r["id"] == record_id:
            r["image"] = image
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)


# -- 1. containment ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("image", ["../../../../etc/passwd", "/etc/passwd", "images/r0.png"])
def test_records_cannot_point_outside_the_folder(tmp_path: Path, image: str) -> None:
    folder = small_folder(tmp_path / "ds")
    point_record_at(folder, "r1", image)
    before = tree_state(tmp_path)
    for attempt in (lambda: DatasetFolder(folder),
                    lambda: export_imagefolder(folder, tmp_path / "hf"),
                    lambda: export_parquet(folder, tmp_path / "pq"),
                    lambda: export_webdataset(folder, tmp_path / "wds"),
                    lambda: filter_dataset(folder, tmp_path / "f")):
        with pytest.raises(DatasetError, match=r"record 'r1' points its image at"):
            attempt()
    assert tree_state(tmp_path) == before  # nothing written
    assert main(["validate", str(folder)]) == 2


def test_symlinked_images_are_refused(tmp_path: Path) -> None:
    folder = small_folder(tmp_path / "ds")
    secret = tmp_path / "secret.png"
    Image.new("L", (8, 8), 255).save(secret)
    (folder / "images" / "r2.png").unlink()
    (folder / "images" / "r2.png").symlink_to(secret)
    for attempt in (lambda: export_parquet(folder, tmp_path / "pq"), lambda: filter_dataset(folder, tmp_path / "f"),
                    lambda: DatasetFolder(folder).load_image("images/r2.png")):
        with pytest.raises(DatasetError, match="r2.png is a symbolic link"):
            attempt()
    assert not (tmp_path / "pq").exists() and not (tmp_path / "f").exists()


def test_a_symlinked_images_folder_is_refused_for_reading_and_writing(tmp_path: Path) -> None:
    folder = small_folder(tmp_path / "ds")
    elsewhere = tmp_path / "elsewhere"
    (folder / "images").rename(elsewhere)
    (folder / "images").symlink_to(elsewhere)
    with pytest.raises(DatasetError, match="is a symbolic link"):
        DatasetFolder(folder)
    with pytest.raises(DatasetError, match="symbolic link"):
        DatasetWriter(folder, EXPR, mode="resume")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["r0.png", "r1.png", "r2.png", "r3.png"]


# -- 2. one writer at a time -----------------------------------------------------------------------------------------
def test_a_second_writer_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    folder = small_folder(tmp_path / "ds")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from synfer.core.dataset import DatasetWriter
        w = DatasetWriter({str(folder)!r}, mode="resume")
        print("holding", flush=True)
        sys.stdin.readline()
        w.close()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        before = tree_state(folder)
        with pytest.raises(DatasetError, match=f"being written by process {holder.pid}"):
            DatasetWriter(folder, mode="resume")
        with pytest.raises(DatasetError, match="being written"):
            DatasetWriter(folder, EXPR, mode="overwrite")
        assert tree_state(folder) == before
    finally:
        holder.communicate("\n", timeout=60)
    assert not (folder / LOCK_FILE).exists()  # released on close
    with DatasetWriter(folder, mode="resume") as w:  # free again
        w.add(Record("r9", "train", "test", "neutral"), Image.new("L", (8, 8)))
    assert len(DatasetFolder(folder)) == 5


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    folder = small_folder(tmp_path / "ds")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (folder / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout),
                                                "since": "earlier"}))
    with DatasetWriter(folder, mode="resume") as w:
        w.add(Record("r9", "train", "test", "neutral"), Image.new("L", (8, 8)))
    assert len(DatasetFolder(folder)) == 5 and not (folder / LOCK_FILE).exists()


# -- 3. --overwrite replaces only synfer's folders -----------------------------------------------------------------
def test_overwrite_never_deletes_a_users_folder(tmp_path: Path) -> None:
    src = small_folder(tmp_path / "ds")
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("years of work")
    before = tree_state(tmp_path)
    for attempt in (lambda: DatasetWriter(thesis, EXPR, mode="overwrite"),
                    lambda: export_imagefolder(src, thesis, overwrite=True),
                    lambda: export_parquet(src, thesis, overwrite=True),
                    lambda: filter_dataset(src, thesis, overwrite=True)):
        with pytest.raises(DatasetError, match="did not make"):
            attempt()
    assert main(["train-fer", str(src), str(thesis), "--overwrite", "--epochs", "1"]) == 2
    assert tree_state(tmp_path) == before
    link = tmp_path / "link"
    link.symlink_to(thesis)
    with pytest.raises(DatasetError, match="symbolic link"):
        export_parquet(src, link, overwrite=True)
    assert (thesis / "chapter1.tex").read_text() == "years of work"
    # synfer's own outputs are replaced as before
    export_parquet(src, tmp_path / "pq")
    export_parquet(src, tmp_path / "pq", overwrite=True)
    filter_dataset(src, tmp_path / "f")
    filter_dataset(src, tmp_path / "f", overwrite=True)


# -- 4. a refused operation changes nothing --------------------------------------------------------------------------
def test_refused_resumes_leave_the_folder_as_it_was(tmp_path: Path) -> None:
    from conftest import write_ferplus_fixture
    from synfer.importers.ferplus import import_ferplus

    rows = {"FER2013Train": [[10, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]]}
    src = write_ferplus_fixture(tmp_path / "src", rows)
    out = import_ferplus(src, tmp_path / "out")
    before = tree_state(out)
    with pytest.raises(DatasetError, match="other options"):
        import_ferplus(src, out, resume=True, label_mode="crossentropy")
    assert tree_state(out) == before and DatasetFolder(out).header.complete
    other = small_folder(tmp_path / "other")
    before = tree_state(other)
    with pytest.raises(DatasetError, match="not by import-ferplus"):
        import_ferplus(src, other, resume=True)
    assert tree_state(other) == before and len(DatasetFolder(other)) == 4


def test_a_refused_writer_leaves_no_lock(tmp_path: Path) -> None:
    folder = small_folder(tmp_path / "ds")
    before = tree_state(folder)
    with pytest.raises(ValueError, match="different order"):
        DatasetWriter(folder, ("happiness", "neutral"), mode="resume")
    assert tree_state(folder) == before and LOCK_FILE not in os.listdir(folder)
