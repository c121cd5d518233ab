"""Importer for image-classification folders (torchvision / Hugging Face "ImageFolder" layout).

Source layouts::

    root/<class>/<images>              every image goes to one split (``split=``, default train)
    root/<split>/<class>/<images>      used when *every* top-level folder is a split name: train, val,
                                       valid, validation or test (valid / validation -> val; any case)

Class folder names resolve through :func:`synfer.schema.canonical_expression`, so ``happy``, ``Happy`` and
``happiness`` are one class. Images are files ending in .png .jpg .jpeg .bmp .webp (any case), also in
sub-folders of a class folder; other files are ignored and counted in ``stats["ignored_files"]``. PNGs are
copied byte for byte when no conversion is asked; other formats are decoded and written as PNG.

Record ids are ``<split>-<class>-<path in the class folder without extension>``, sanitised to letters, digits
and ``._-`` and de-duplicated (``-2``, ``-3``, ... in sorted file order, so a rerun gives the same ids).
"""

from __future__ import annotations

import re
from pathlib import Path

from tqdm.auto import tqdm

from ..core.dataset import Record
from ..core.options import ImportOptions
from ..schema import EXPRESSION_SETS, ExpressionSet, canonical_expression, get_expression_set
from .common import BadInputError, UniqueIds, image_for_writer, start_import

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _visible_dirs(folder: Path) -> list[Path]:
    # Hidden folders (.ipynb_checkpoints, .git: tool litter whose name starts with ".") are never classes.
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_folders(root: Path, split: str) -> tuple[list[tuple[str, Path]], int, str]:
    """``(split, class folder)`` pairs in sorted order, the number of loose files beside them, the layout."""
    top = _visible_dirs(root)
    loose = sum(1 for p in root.iterdir() if p.is_file())
    if top and all(d.name.lower() in SPLIT_NAMES for d in top):
        pairs = []
        for d in top:
            loose += sum(1 for p in d.iterdir() if p.is_file())
            pairs += [(SPLIT_NAMES[d.name.lower()], c) for c in _visible_dirs(d)]
        return pairs, loose, "split/class"
    return [(split, d) for d in top], loose, "class"


def _resolve_expressions(expressions: list[str] | str | None, found: list[str]) -> ExpressionSet:
    """The expression set: the given one, else the built-in set whose classes are exactly those found."""
    if expressions is not None:
        if isinstance(expressions, str):
            expressions = [expressions]
        if len(expressions) == 1 and expressions[0] in EXPRESSION_SETS:
            return EXPRESSION_SETS[expressions[0]]
        return get_expression_set(list(expressions))
    # Exact match, not "contains": FERPLUS8 holds every canonical name, so "contains" would always pick it and
    # give a 7-class folder a contempt column without examples. Several 7-class sets share names; the first
    # (BASIC7, FER2013's order) wins.
    for s in EXPRESSION_SETS.values():
        if set(s.names) == set(found):
            return s
    return ExpressionSet("custom", tuple(sorted(found)), "classes found in the image folder, sorted")


def import_imagefolder(
    root: Path,
    out: Path,
    expressions: list[str] | None = None,
    split: str = "train",
    importing: ImportOptions = ImportOptions(),
) -> Path:
    """Import an image folder (one sub-folder per expression, optionally under split folders).

    Args:
        root: the folder holding the class folders (or the train/val/test folders holding them).
        out: the dataset folder to write.
        expressions: label order: expression names (aliases accepted) or one set name such as ``ferplus8``.
            Default: the built-in set (FERPLUS8, BASIC7, RAFDB7, AFFECTNET8, AFFECTNET7, first match) whose
            classes are exactly the class folders found, else the found classes sorted by name.
        split: the split of every image in the ``root/<class>/`` layout (ignored when split folders exist).
        importing: how the source is read and the folder written (plain flags work: --skip-bad, --resume).

    Returns:
        the output folder.
    """
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise BadInputError(f"{root}: not a folder; point to the folder that holds one sub-folder per "
                            "expression.")
    if not re.match(r"^[a-z][a-z0-9_]{0,31}$", split):
        raise ValueError(f"split {split!r}: use a lower-case name such as train, val or test.")
    pairs, loose, layout = _class_folders(root, split)
    if not pairs:
        raise BadInputError(f"{root}: no class folders found; expected {root}/<expression>/<images> or "
                            f"{root}/<split>/<expression>/<images>.")
    # Scan the whole tree before writing anything (the folder names are the labels): a bad class fails early.
    problems: list[tuple[str, str]] = []
    classes: list[tuple[str, Path, str, list[Path]]] = []  # split, folder, canonical class, image files
    ignored = loose
    for sp, folder in pairs:
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
        ignored += len(files) - len(images)
        try:
            classes.append((sp, folder, canonical_expression(folder.name), images))
        except ValueError as e:
            problems.append(("unknown_class", f"{folder}: class folder {folder.name!r} ({len(images)} "
                                              f"images) is not an expression name. {e}"))
    chosen = _resolve_expressions(expressions, sorted({c for _, _, c, _ in classes}))
    for _, folder, canon, images in classes:
        if canon not in chosen.names:
            problems.append(("unknown_class", f"{folder}: class folder {folder.name!r} ({canon}, "
                                              f"{len(images)} images) is not in expression set {chosen.name} "
                                              f"{list(chosen.names)}."))
    classes = [c for c in classes if c[2] in chosen.names]
    if not classes:
        raise BadInputError(f"{root}: none of the class folders {[f.name for _, f in pairs]} is an "
                            f"expression of {list(chosen.names)}; nothing to import.")
    config = {"source": str(root.resolve()), "layout": layout, "split": split if layout == "class" else None,
              "expressions": list(chosen.names)}
    writer, bad = start_import(out, chosen.names, "import-imagefolder", config, problems, importing,
                               what="bad class folder(s)", fix="Rename or remove it, or choose --expressions")
    with writer:
        ids = UniqueIds()
        total = sum(len(images) for *_, images in classes)
        with tqdm(total=total, desc="image folder", unit="img", mininterval=1.0) as progress:
            for sp, folder, canon, images in classes:
                probs = [0.0] * len(chosen)
                probs[chosen.names.index(canon)] = 1.0
                for path in images:
                    progress.update()
                    rel_in_class = path.relative_to(folder).with_suffix("").as_posix()
                    rid = ids(f"{sp}-{canon}-{rel_in_class}")  # allocated even when skipped: ids stay stable
                    if writer.has(rid):
                        continue  # resume: already written
                    try:
                        image = image_for_writer(path, importing.image_mode, importing.image_size)
                    except BadInputError as e:
                        bad("bad_image", str(e))
                        continue
                    source = f"imagefolder:{path.relative_to(root).as_posix()}"
                    writer.add(Record(id=rid, split=sp, source=source, expression=canon, label_probs=probs,
                                      meta={"class_folder": folder.name}), image)
        writer.header.stats["ignored_files"] = ignored
        writer.header.stats["layout"] = layout
    return out
