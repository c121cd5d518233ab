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
from synfer.core.options import ImportOptions

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
        import_ferplus(src, out, label_mode="crossentropy", importing=ImportOptions(resume=True))
    assert tree_state(out) == before and DatasetFolder(out).header.complete
    other = small_folder(tmp_path / "other")
    before = tree_state(other)
    with pytest.raises(DatasetError, match="not by import-ferplus"):
        import_ferplus(src, other, importing=ImportOptions(resume=True))
    assert tree_state(other) == before and len(DatasetFolder(other)) == 4


def test_a_refused_writer_leaves_no_lock(tmp_path: Path) -> None:
    folder = small_folder(tmp_path / "ds")
    before = tree_state(folder)
    with pytest.raises(ValueError, match="different order"):
        DatasetWriter(folder, ("happiness", "neutral"), mode="resume")
    assert tree_state(folder) == before and LOCK_FILE not in os.listdir(folder)


# -- 5. images normalised at import, checked by validate ---------------------------------------------------------
def test_import_normalises_16_bit_alpha_and_palette_images(tmp_path: Path) -> None:
    import numpy as np

    from synfer.importers.imagefolder import import_imagefolder

    root = tmp_path / "photos" / "happiness"
    root.mkdir(parents=True)
    gray16 = np.full((8, 8), 40000, np.uint16)
    Image.fromarray(gray16).save(root / "g16.png")  # 16-bit gray: a plain conversion reads it as all white
    Image.new("RGBA", (8, 8), (10, 200, 30, 0)).save(root / "rgba.png")
    Image.new("RGB", (8, 8), (200, 10, 10)).convert("P").save(root / "pal.png")
    Image.new("LA", (8, 8), (77, 128)).save(root / "la.png")
    out = import_imagefolder(tmp_path / "photos", tmp_path / "ds")
    folder = DatasetFolder(out)
    modes = {r.id.rsplit("-", 1)[-1]: folder.load_image(r.image) for r in folder.records()}
    assert {k: v.mode for k, v in modes.items()} == {"g16": "L", "la": "L", "pal": "RGB", "rgba": "RGB"}
    assert np.asarray(modes["g16"]).max() == round(40000 / 65535 * 255)  # scaled, not clipped to 255
    assert np.asarray(modes["la"]).max() == 77
    # a folder that holds a 16-bit image anyway is reported by validate
    (g16,) = [r for r in folder.records() if r.id.endswith("g16")]
    Image.fromarray(gray16).save(out / g16.image)
    assert main(["validate", str(out)]) == 2


# -- 7. header types ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change,message", [
    ({"complete": "false"}, '"complete" must be true/false'),
    ({"expressions": "neutral"}, '"expressions" must be a list'),
    ({"expressions": ["neutral", "neutral"]}, "distinct"),
    ({"stats": []}, '"stats" must be an object'),
    ({"provenance": ["x"]}, "list of objects"),
])
def test_header_fields_are_type_checked(tmp_path: Path, change: dict, message: str) -> None:
    folder = small_folder(tmp_path / "ds")
    header = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**header, **change}))
    with pytest.raises(DatasetError, match=message):
        DatasetFolder(folder)
    (folder / "dataset.json").write_text("[]")
    with pytest.raises(DatasetError, match="JSON object"):
        DatasetFolder(folder)


def test_validate_catches_a_hand_reordered_expression_list(tmp_path: Path) -> None:
    from synfer.core.report import validate_dataset

    with DatasetWriter(tmp_path / "ds", EXPR) as w:
        for i in range(12):
            probs = [0.9, 0.1] if i % 2 == 0 else [0.2, 0.8]
            w.add(Record(f"r{i}", "train", "test", EXPR[i % 2], probs), Image.new("L", (8, 8)))
    assert validate_dataset(tmp_path / "ds") == []
    header = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    header["expressions"] = list(reversed(header["expressions"]))
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps(header))
    (problem,) = validate_dataset(tmp_path / "ds")
    assert "0% of 12 labels agree" in problem and "edited" in problem


# -- 8. options checked before anything is written or loaded -------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["generate", "{out}", "--split", "Bad Split"],
    ["generate", "{out}", "--num-inference-steps", "0"],
    ["generate", "{out}", "--num-inference-steps", "-3"],
    ["generate", "{out}", "--guidance-window", "[0.9,0.1]"],
    ["generate", "{out}", "--au-jitter", "-5"],
    ["split", "{src}", "{out}", "--to-split", "Val X"],
    ["label", "{src}", "{out}", "--annotators", "ferplus-resnet-s", "--threshold", "2"],
    ["import-imagefolder", "{photos}", "{out}", "--image-size", "0"],
    ["import-imagefolder", "{photos}", "{out}", "--image-mode", "CMYK"],
    ["edit", "{src}", "{out}", "--expression", "happiness", "--num-inference-steps", "0"],
])
def test_bad_options_fail_fast_and_write_nothing(tmp_path: Path, argv: list[str], capsys) -> None:
    import time

    src = small_folder(tmp_path / "src")
    (tmp_path / "photos" / "happiness").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "photos" / "happiness" / "a.png")
    before = tree_state(tmp_path)
    args = [a.format(out=tmp_path / "out", src=src, photos=tmp_path / "photos") for a in argv]
    t0 = time.perf_counter()
    assert main(args) == 2
    assert time.perf_counter() - t0 < 20 and not (tmp_path / "out").exists() and tree_state(tmp_path) == before
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


# -- 9. no network, no remote code ----------------------------------------------------------------------------------
def test_model_folders_never_run_their_own_code(pipe_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A text encoder config asking for custom code (auto_map + modeling file) loads synfer's known class; the
    custom file never runs. Loading with the network cut (hub offline, sockets refused) still works."""
    import socket

    from synfer.generator.pipeline import SynferPipeline

    config_path = pipe_dir / "text_encoder" / "text_model" / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel", "AutoConfig": "modeling_evil.EvilConfig"}
    config_path.write_text(json.dumps(config))
    ran = tmp_path / "ran"
    (config_path.parent / "modeling_evil.py").write_text(f"open({str(ran)!r}, 'w').write('x')\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*a, **k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    pipe = SynferPipeline.from_pretrained(pipe_dir)
    assert type(pipe.text_encoder.text_model).__name__ == "CLIPTextModel" and not ran.exists()


def test_broken_model_and_image_files_are_named(tmp_path: Path) -> None:
    import pickle

    from synfer.models.classifiers import ExpressionClassifier

    ExpressionClassifier.from_pretrained("ferplus-resnet-s").save_pretrained(tmp_path / "clf")
    weights = tmp_path / "clf" / "model.safetensors"
    for data in (weights.read_bytes()[:1000], pickle.dumps({"w": 1})):
        weights.write_bytes(data)
        with pytest.raises(ValueError, match=r"model.safetensors: not this classifier's safetensors weights"):
            ExpressionClassifier.from_pretrained(tmp_path / "clf")
    (tmp_path / "clf" / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"config.json: not valid JSON"):
        ExpressionClassifier.from_pretrained(tmp_path / "clf")
    folder = small_folder(tmp_path / "ds")
    image = folder / "images" / "r1.png"
    image.write_bytes(image.read_bytes()[:30])  # truncated
    with pytest.raises(DatasetError, match="r1.png: the image does not decode"):
        DatasetFolder(folder).load_image("images/r1.png")


def test_duplicate_label_rows_are_refused_or_counted(tmp_path: Path) -> None:
    from conftest import write_ferplus_fixture
    from synfer.importers.ferplus import import_ferplus

    src = write_ferplus_fixture(tmp_path / "src", {"FER2013Train": [[10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                                                                     [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]]})
    label = src / "FER2013Train" / "label.csv"
    first = label.read_text().splitlines()[0]
    label.write_text(label.read_text() + first.replace(",10,0,", ",0,10,") + "\n")  # the same image, other votes
    with pytest.raises(DatasetError, match="already listed on line 1"):
        import_ferplus(src, tmp_path / "out")
    out = import_ferplus(src, tmp_path / "out", importing=ImportOptions(skip_bad=True))
    assert len(DatasetFolder(out)) == 2
    assert DatasetFolder(out).header.stats["skipped"]["duplicate_row"]["count"] == 1


def test_a_killed_exports_staging_folder_is_cleaned_by_the_next(tmp_path: Path) -> None:
    """SIGKILL an export mid-way: its .tmp-*-OUT staging folder is left; the next export to OUT removes it (its
    process is gone) and finishes."""
    import signal

    src = small_folder(tmp_path / "ds", n=400)
    code = textwrap.dedent(f"""
        import os, signal
        import synfer.core.export as export
        real = export.flat_record
        calls = [0]
        def slow(rec, header):
            calls[0] += 1
            if calls[0] == 50:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(rec, header)
        export.flat_record = slow
        export.export_parquet({str(src)!r}, {str(tmp_path / 'pq')!r})
        """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert run.returncode == -signal.SIGKILL
    (left,) = tmp_path.glob(".tmp-*-pq")
    export_parquet(src, tmp_path / "pq")
    assert not left.exists() and not list(tmp_path.glob(".tmp-*")) and (tmp_path / "pq" / "README.md").is_file()


@pytest.mark.slow
def test_two_concurrent_generate_runs_cannot_share_a_folder(pipe_dir: Path, tmp_path: Path) -> None:
    """Two `generate --resume` on one OUT: while the first runs, the second is refused naming it; the folder then
    holds exactly the planned faces, no duplicates."""
    out = tmp_path / "syn"
    code = textwrap.dedent(f"""
        import sys
        import synfer.core.dataset as dataset
        from synfer.synthesize.generate import generate
        real_flush = dataset.DatasetWriter.flush
        def slow_flush(self):
            if self.write_header and self._buffer:
                print("writing", flush=True)
                sys.stdin.readline()  # hold the folder until the test says go
            real_flush(self)
        dataset.DatasetWriter.flush = slow_flush
        generate({str(out)!r}, pipeline={str(pipe_dir)!r}, per_class=2, expressions=["happiness", "sadness"],
                 batch_size=2, flush_every=2, preview=False, resume=True)
        """)
    first = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        assert first.stdout.readline().strip() == "writing"
        code2 = main(["generate", str(out), "--pipeline", str(pipe_dir), "--per-class", "2", "--expressions",
                      "happiness,sadness", "--batch-size", "2", "--flush-every", "2", "--no-preview", "--resume"])
        assert code2 == 2
    finally:
        first.communicate("\n" * 10, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    folder = DatasetFolder(out)
    assert len(folder) == 4 and len(set(folder.ids)) == 4 and folder.header.complete


@pytest.mark.slow
def test_the_hostile_input_sweep_finds_nothing(tmp_path: Path) -> None:
    """tools/hostile_inputs.py's catalogue (about a hundred broken or hostile command lines over the hardening
    classes): no traceback, no unexpected error, no changed input, nothing touched outside, no wrong result."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hostile_inputs",
                                                  Path(__file__).resolve().parents[1] / "tools" / "hostile_inputs.py")
    sweep = importlib.util.module_from_spec(spec)
    sys.modules["hostile_inputs"] = sweep  # its dataclasses look their module up there
    spec.loader.exec_module(sweep)
    cases = sweep.catalogue()
    for i, case in enumerate(cases):
        sweep.run(case, tmp_path, i)
    bad = [(c.name, c.result) for c in cases if c.result["exit"] not in (0, 2) or c.result["changed_inputs"]
           or c.result["outside"] or c.result["wrong"]]
    assert len(cases) >= 90 and bad == []


def test_every_bundled_model_loads_with_the_network_cut(monkeypatch) -> None:
    """Sockets refused, hub offline: the generator (with diffusers' own loader too), classifiers (with timm's too),
    the FERAnno annotator and the AU estimator all load from the package."""
    import socket

    import timm
    from diffusers import DiffusionPipeline

    import synfer
    from synfer.annotate.au.distilled import DistilledAUEstimator
    from synfer.labeling.annotators import load_annotator
    from synfer.models.classifiers import ExpressionClassifier

    def no_network(*a, **k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert synfer.load_pipeline().au_adapter is not None
    assert type(DiffusionPipeline.from_pretrained(synfer.resolve("generator", "ferplus-mini-lcm"))).__name__ == \
        "SynferPipeline"
    for name in ("ferplus-resnet-s", "ferplus-vgg13s-judge"):
        assert ExpressionClassifier.from_pretrained(name).label_names[0] == "neutral"
        assert timm.create_model(name, pretrained=True).num_classes == 8
    assert load_annotator("ferplus-feranno-mini", "cpu") is not None
    assert DistilledAUEstimator.from_pretrained() is not None
