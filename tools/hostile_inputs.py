"""Try synfer's CLI on broken and hostile inputs, as a new user and an attacker would, and count what happens.

    python tools/hostile_inputs.py [--work DIR] [--json OUT.json]

Each case builds its inputs in a fresh folder under WORK (small dataset folders, FER+-layout folders, photos, model
folders), runs one command line through ``synfer.cli.main`` in this process, and records:

* ``exit``: 0 (accepted), 2 (refused with a one-line error), 1 (an unexpected error, reported as a bug) or
  ``traceback`` (an exception escaped the CLI);
* ``changed_inputs``: files of the case's inputs changed, added or removed (a refused command must change nothing,
  and no command edits its input);
* ``outside``: files changed beside the case's folder (a sentinel folder that no command names);
* ``wrong``: the case's own check of the result failed (a silently wrong result).

Classes follow the hardening issue: containment, concurrent writers (covered in tests/test_hardening.py, which needs
a second process), --overwrite, refused resumes, images, tracebacks, header types, late option checks, remote code
and smaller ones. The summary prints counts per class; ``--json`` keeps every case.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from synfer.cli import main
from synfer.core.dataset import DatasetFolder, DatasetWriter, Record
from synfer.core.provenance import provenance_entry

EXPR = ("neutral", "happiness")


@dataclass
class Case:
    """One command line on inputs made by ``make(root) -> argv``; ``check(root) -> bool`` judges an accepted run."""

    cls: str
    name: str
    make: Callable[[Path], list[str]]
    check: Callable[[Path], bool] | None = None
    result: dict[str, Any] = field(default_factory=dict)


# -- inputs ------------------------------------------------------------------------------------------------------
def folder(root: Path, n: int = 4, name: str = "ds") -> Path:
    with DatasetWriter(root / name, EXPR) as w:
        w.add_provenance(provenance_entry("import-test", {}))
        for i in range(n):
            w.add(Record(f"r{i}", "train" if i < n - 1 else "test", "test", EXPR[i % 2],
                         [0.9, 0.1] if i % 2 == 0 else [0.1, 0.9]), Image.new("L", (8, 8), 30 * i))
    return root / name


def ferplus(root: Path) -> Path:
    src = root / "ferplus" / "FER2013Train"
    src.mkdir(parents=True)
    lines = []
    for i in range(3):
        Image.fromarray(np.full((48, 48), 40 * i, np.uint8)).save(src / f"fer{i:07d}.png")
        votes = [0] * 10
        votes[i] = 10
        lines.append(f'fer{i:07d}.png,"(0, 0, 48, 48)",' + ",".join(map(str, votes)))
    (src / "label.csv").write_text("\n".join(lines) + "\n")
    return root / "ferplus"


def record_image(ds: Path, rid: str, image: str) -> None:
    (shard,) = ds.glob("records-*.parquet")
    t = pq.read_table(shard)
    rows = [dict(r, image=image) if r["id"] == rid else r for r in t.to_pylist()]
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), shard)


def header_with(ds: Path, **change: Any) -> Path:
    h = json.loads((ds / "dataset.json").read_text())
    (ds / "dataset.json").write_text(json.dumps({**h, **change}))
    return ds


def user_folder(root: Path) -> Path:
    (root / "thesis").mkdir()
    (root / "thesis" / "chapter1.tex").write_text("years of work")
    return root / "thesis"


def classifier(root: Path, **change: Any) -> Path:
    from synfer.models.classifiers import ExpressionClassifier

    out = ExpressionClassifier.from_pretrained("ferplus-resnet-s").save_pretrained(root / "clf")
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, **change}))
    return out


# -- the catalogue -------------------------------------------------------------------------------------------------
def catalogue() -> list[Case]:
    cases: list[Case] = []
    add = cases.append
    for bad in ("../../../../etc/passwd", "/etc/passwd", "images/r0.png", "images/../../secret.png"):
        for verb in ("validate", "info", "export-imagefolder", "export-parquet", "export-webdataset", "filter"):
            def make(r: Path, bad=bad, verb=verb) -> list[str]:
                ds = folder(r)
                record_image(ds, "r1", bad)
                return [verb, str(ds)] + ([] if verb in ("validate", "info") else [str(r / "out")])
            add(Case("1 containment", f"{verb} with image {bad}", make))
    for verb in ("validate", "export-parquet", "filter", "export-imagefolder"):
        def make(r: Path, verb=verb) -> list[str]:
            ds = folder(r)
            (ds / "images" / "r1.png").unlink()
            (ds / "images" / "r1.png").symlink_to(r.parent / "sentinel" / "secret.png")
            return [verb, str(ds)] + ([] if verb == "validate" else [str(r / "out")])
        add(Case("1 containment", f"{verb} with a symlinked image", make))
    for verb, extra in (("export-imagefolder", []), ("export-parquet", []), ("export-webdataset", []),
                        ("filter", []), ("split", []), ("merge", [])):
        def make(r: Path, verb=verb, extra=extra) -> list[str]:
            ds, thesis = folder(r), user_folder(r)
            return [verb, str(ds), str(thesis), "--overwrite", *extra]
        add(Case("3 overwrite", f"{verb} --overwrite onto a user's folder", make,
                 check=lambda r: (r / "thesis" / "chapter1.tex").read_text() == "years of work"))
    add(Case("3 overwrite", "import-ferplus --overwrite onto a user's folder",
             lambda r: ["import-ferplus", str(ferplus(r)), str(user_folder(r)), "--overwrite"]))
    add(Case("3 overwrite", "train-fer --overwrite onto a user's folder",
             lambda r: ["train-fer", str(folder(r)), str(user_folder(r)), "--overwrite", "--epochs", "1"]))
    for verb in ("export-parquet", "filter"):
        def make(r: Path, verb=verb) -> list[str]:
            ds, thesis = folder(r), user_folder(r)
            (r / "link").symlink_to(thesis)
            return [verb, str(ds), str(r / "link"), "--overwrite"]
        add(Case("3 overwrite", f"{verb} --overwrite onto a symlink", make))

    def foreign_resume(r: Path) -> list[str]:
        return ["import-ferplus", str(ferplus(r)), str(folder(r)), "--resume"]
    add(Case("4 refused resume", "import-ferplus --resume into another command's folder", foreign_resume))

    def other_options(r: Path) -> list[str]:
        src = ferplus(r)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            main(["import-ferplus", str(src), str(r / "out")])
        return ["import-ferplus", str(src), str(r / "out"), "--resume", "--label-mode", "crossentropy"]
    add(Case("4 refused resume", "import-ferplus --resume with other options", other_options))

    for mode, image in (("I;16", Image.fromarray(np.full((8, 8), 40000, np.uint16))),
                        ("RGBA", Image.new("RGBA", (8, 8), (9, 9, 9, 0))), ("P", Image.new("P", (8, 8))),
                        ("LA", Image.new("LA", (8, 8))), ("1", Image.new("1", (8, 8)))):
        def make(r: Path, image=image, mode=mode) -> list[str]:
            (r / "photos" / "happiness").mkdir(parents=True)
            image.save(r / "photos" / "happiness" / f"x{mode.replace(';', '')}.png")
            return ["import-imagefolder", str(r / "photos"), str(r / "out")]
        add(Case("5 images", f"import a {mode} PNG", make,
                 check=lambda r: all(DatasetFolder(r / "out").load_image(x.image).mode in ("L", "RGB")
                                     for x in DatasetFolder(r / "out").records())))
    for change in ({"complete": "false"}, {"expressions": None}, {"expressions": "neutral"}, {"aus": []},
                   {"stats": []}, {"provenance": ["x"]}, {"licence": 3}, {"schema_version": "1"}):
        for verb in ("info", "validate", "export-parquet"):
            def make(r: Path, change=change, verb=verb) -> list[str]:
                ds = header_with(folder(r), **change)
                return [verb, str(ds)] + ([str(r / "out")] if verb.startswith("export") else [])
            add(Case("7 header types", f"{verb} with header {json.dumps(change)}", make))
    for text in ("[]", "null", "{", "\xff\xfe"):
        def make(r: Path, text=text) -> list[str]:
            ds = folder(r)
            (ds / "dataset.json").write_bytes(text.encode("latin-1"))
            return ["info", str(ds)]
        add(Case("6 tracebacks", f"info with dataset.json {text!r}", make))
    for verb in ("validate", "export-parquet", "filter"):
        def make(r: Path, verb=verb) -> list[str]:
            ds = folder(r)
            p = ds / "images" / "r2.png"
            p.write_bytes(p.read_bytes()[:25])
            return [verb, str(ds)] + ([] if verb == "validate" else [str(r / "out")])
        add(Case("6 tracebacks", f"{verb} with a truncated image", make))
    add(Case("6 tracebacks", "import-imagefolder with a decompression bomb (a PNG declaring 20000 x 20000)",
             lambda r: ["import-imagefolder", str(_bomb(r)), str(r / "out")]))
    add(Case("6 tracebacks", "info with label_probs stored as a string", lambda r: [
        "info", str(_string_probs(folder(r)))]))
    add(Case("6 tracebacks", "evaluate with a corrupt model.safetensors", lambda r: [
        "evaluate", str(_corrupt_weights(classifier(r))), str(folder(r)), "--split", "test"]))
    add(Case("6 tracebacks", "evaluate --device tpu9", lambda r: [
        "evaluate", "ferplus-resnet-s", str(folder(r)), "--split", "test", "--device", "tpu9"]))
    add(Case("6 tracebacks", "import-imagefolder --image-mode CMYK", lambda r: [
        "import-imagefolder", str(_photos(r)), str(r / "out"), "--image-mode", "CMYK"]))
    add(Case("6 tracebacks", "import-ferplus with a UTF-16 label file", lambda r: [
        "import-ferplus", str(_utf16(ferplus(r))), str(r / "out")]))
    for argv in (["generate", "{out}", "--split", "Bad Split"], ["generate", "{out}", "--num-inference-steps", "0"],
                 ["generate", "{out}", "--num-inference-steps", "-3"], ["generate", "{out}", "--batch-size", "0"],
                 ["generate", "{out}", "--guidance-window", "[0.9,0.1]"], ["generate", "{out}", "--au-jitter", "-5"],
                 ["generate", "{out}", "--layout-strength", "0"], ["generate", "{out}", "--flush-every", "0"],
                 ["split", "{ds}", "{out}", "--to-split", "Val X"], ["split", "{ds}", "{out}", "--fraction", "2"],
                 ["label", "{ds}", "{out}", "--annotators", "ferplus-resnet-s", "--threshold", "2"],
                 ["import-imagefolder", "{photos}", "{out}", "--image-size", "0"],
                 ["edit", "{ds}", "{out}", "--expression", "happiness", "--num-inference-steps", "0"],
                 ["edit", "{ds}", "{out}", "--expression", "happiness", "--strength", "0"],
                 ["train-fer", "{ds}", "{out}", "--epochs", "0"]):
        def make(r: Path, argv=argv) -> list[str]:
            ds, photos = folder(r), _photos(r)
            return [a.format(out=r / "out", ds=ds, photos=photos) for a in argv]
        add(Case("8 options", " ".join(argv).replace("{out}", "OUT").replace("{ds}", "DS"), make,
                 check=lambda r: not (r / "out").exists()))
    for change in ({"architecture": "hf-hub:timm/resnet18.a1_in1k"}, {"model_kwargs": {"timm_pretrained": True}},
                   {"model_kwargs": {"pretrained_cfg_overlay": {"file": "x.pth"}}}):
        add(Case("9 remote", f"evaluate a classifier whose config has {json.dumps(change)}",
                 lambda r, change=change: ["evaluate", str(classifier(r, **change)), str(folder(r)), "--split",
                                           "test"]))

    def duplicate_rows(r: Path) -> list[str]:
        src = ferplus(r)
        label = src / "FER2013Train" / "label.csv"
        first = label.read_text().splitlines()[0]
        label.write_text(label.read_text() + first.replace(",10,0,", ",0,10,") + "\n")
        return ["import-ferplus", str(src), str(r / "out")]
    add(Case("10 smaller", "import-ferplus with a conflicting duplicate row", duplicate_rows,
             check=lambda r: not (r / "out").exists()))
    return cases


def _corrupt_weights(clf: Path) -> Path:
    w = clf / "model.safetensors"
    w.write_bytes(w.read_bytes()[:500])
    return clf


def _bomb(r: Path) -> Path:
    """A photo folder holding a PNG whose header declares 20000 x 20000 pixels (400M: past PIL's bomb limit)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    (r / "photos" / "happiness").mkdir(parents=True, exist_ok=True)
    (r / "photos" / "happiness" / "bomb.png").write_bytes(png)
    return r / "photos"


def _string_probs(ds: Path) -> Path:
    (shard,) = ds.glob("records-*.parquet")
    t = pq.read_table(shard)
    rows = [dict(r, label_probs=json.dumps(r["label_probs"])) for r in t.to_pylist()]
    pq.write_table(pa.Table.from_pylist(rows), shard)
    return ds


def _photos(r: Path) -> Path:
    (r / "photos" / "happiness").mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8)).save(r / "photos" / "happiness" / "a.png")
    return r / "photos"


def _utf16(src: Path) -> Path:
    label = src / "FER2013Train" / "label.csv"
    label.write_bytes(label.read_text().encode("utf-16"))
    return src


# -- running -------------------------------------------------------------------------------------------------------
def state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


def run(case: Case, work: Path, index: int) -> None:
    root = work / f"case-{index:03d}"
    (root / "in").mkdir(parents=True)
    sentinel = root / "sentinel"
    sentinel.mkdir()
    Image.new("L", (8, 8), 255).save(sentinel / "secret.png")
    argv = case.make(root / "in")
    out = root / "in" / "out"  # the one folder a case's command may write; a user's folder named instead must stay
    before, outside_before = _inputs_state(root / "in", out), state(sentinel)
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code: Any = main(argv)
    except SystemExit as e:  # the argument parser's own refusals
        code = e.code if isinstance(e.code, int) else 2
    except BaseException as e:  # noqa: BLE001 - what the sweep looks for
        code = f"traceback ({type(e).__name__}: {str(e)[:80]})"
    case.result = {"exit": code, "changed_inputs": _changes(before, _inputs_state(root / "in", out)),
                   "outside": _changes(outside_before, state(sentinel)),
                   "wrong": bool(code == 0 and case.check is not None and not case.check(root / "in")),
                   "error": err.getvalue().strip().splitlines()[-1][:160] if err.getvalue().strip() else ""}


def _inputs_state(root: Path, out: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` but the output folder ``out`` and its staging siblings."""
    name = out.name
    return {k: v for k, v in state(root).items()
            if not (k == name or k.startswith(name + "/") or k.startswith(".tmp-") or k.startswith(".old-"))}


def _changes(a: dict, b: dict) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def main_cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=None, help="where the cases' folders go (default: a temp folder)")
    ap.add_argument("--json", type=Path, default=None, help="write every case's result here")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="synfer-hostile-"))
    cases = catalogue()
    for i, case in enumerate(cases):
        run(case, work, i)
    summary: dict[str, dict[str, int]] = {}
    for c in cases:
        s = summary.setdefault(c.cls, {"cases": 0, "accepted": 0, "refused": 0, "unexpected": 0, "traceback": 0,
                                       "changed_inputs": 0, "outside": 0, "wrong": 0})
        s["cases"] += 1
        code = c.result["exit"]
        s[{0: "accepted", 2: "refused", 1: "unexpected"}.get(code, "traceback")] += 1
        s["changed_inputs"] += bool(c.result["changed_inputs"])
        s["outside"] += bool(c.result["outside"])
        s["wrong"] += c.result["wrong"]
    cols = ["cases", "accepted", "refused", "unexpected", "traceback", "changed_inputs", "outside", "wrong"]
    print("| class | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for cls, s in sorted(summary.items(), key=lambda kv: int(kv[0].split()[0])):
        print(f"| {cls} | " + " | ".join(str(s[c]) for c in cols) + " |")
    total = {c: sum(s[c] for s in summary.values()) for c in cols}
    print("| all | " + " | ".join(str(total[c]) for c in cols) + " |")
    bad = [c for c in cases if c.result["exit"] not in (0, 2) or c.result["changed_inputs"] or c.result["outside"]
           or c.result["wrong"]]
    for c in bad:
        print(f"  ! {c.cls}: {c.name}: {c.result}")
    if args.json:
        args.json.write_text(json.dumps([{"class": c.cls, "case": c.name, **c.result} for c in cases], indent=1))
    shutil.rmtree(work, ignore_errors=True) if args.work is None else None


if __name__ == "__main__":
    main_cli()
