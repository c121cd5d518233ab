"""What every importer shares: opening the output writer, checked image reading, the bad-input policy.

An importer reads a source in a user's format and writes a dataset folder. It never modifies the source. It
parses the label files completely before creating the output, so a malformed label file fails before anything
is written; an image that cannot be read fails (or, with ``skip_bad``, is skipped and counted) as it is reached.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..dataset import DatasetError, DatasetWriter, provenance_entry
from ..schema import AUSet

#: Licence note written into headers of FER2013-derived folders.
FER2013_LICENCE = (
    "FER2013 images (Goodfellow et al., 2015): released for the ICML 2013 challenge, no explicit licence, "
    "research use by convention; do not redistribute. FER+ labels: MIT licence, Microsoft."
)


class BadInputError(DatasetError):
    """An input file or row is unusable; the message names it and says how to fix it (or to pass --skip-bad)."""


class BadInputPolicy:
    """Raise on bad input, or (``skip_bad=True``) count it in the output header and go on.

    Args:
        writer: the output writer whose header stats receive the counts.
        skip_bad: skip and count instead of raising.
    """

    def __init__(self, writer: DatasetWriter, skip_bad: bool) -> None:
        self.writer = writer
        self.skip_bad = skip_bad

    def __call__(self, reason: str, message: str) -> None:
        if not self.skip_bad:
            raise BadInputError(f"{message} Fix or remove it, or pass --skip-bad to skip such inputs and count them.")
        self.writer.count_skipped(reason, message)


def open_output(
    out: str | Path,
    expressions: Sequence[str],
    stage: str,
    config: dict[str, Any],
    aus: AUSet | None = None,
    overwrite: bool = False,
    resume: bool = False,
    licence: str = "",
) -> DatasetWriter:
    """Create (or resume) the output folder of an import and record its provenance."""
    if overwrite and resume:
        raise ValueError("Pass either overwrite or resume, not both.")
    mode = "overwrite" if overwrite else "resume" if resume else "create"
    writer = DatasetWriter(out, expressions=expressions, aus=aus, mode=mode, licence=licence)
    writer.add_provenance(provenance_entry(stage, config))
    return writer


def read_image_checked(path: Path, mode: str | None = None, size: int | None = None,
                       box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """Open and fully decode an image, optionally crop (x, y, w, h), convert and resize.

    Args:
        path: the file.
        mode: ``"L"`` or ``"RGB"`` to convert, None to keep the file's mode (palette/alpha become RGB).
        size: resize to ``size x size`` (bicubic) if given.
        box: crop box (x, y, w, h) in pixels, clamped to the image, applied before resizing.

    Raises:
        BadInputError: the file is missing or not a decodable image (message names the file).
    """
    if not path.is_file():
        raise BadInputError(f"{path}: image file not found.")
    try:
        with Image.open(path) as im:
            im.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadInputError(f"{path}: not a readable image ({type(e).__name__}: {e}).") from e
    if box is not None:
        x, y, w, h = box
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(im.width, x + w), min(im.height, y + h)
        if x1 <= x0 or y1 <= y0:
            raise BadInputError(f"{path}: face box {box} lies outside the {im.width}x{im.height} image.")
        im = im.crop((x0, y0, x1, y1))
    if mode is not None:
        im = im.convert(mode)
    elif im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    return im


def png_bytes_checked(path: Path) -> bytes:
    """Bytes of a PNG file after checking that it decodes (copied as is: fastest, bit-exact).

    Raises:
        BadInputError: missing file, not a PNG, or a PNG that does not decode.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise BadInputError(f"{path}: image file not found.") from e
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise BadInputError(f"{path}: not a PNG file.")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BadInputError(f"{path}: corrupt PNG ({type(e).__name__}: {e}).") from e
    return data


def image_for_writer(path: Path, mode: str | None, size: int | None) -> Image.Image | bytes:
    """What to hand the writer for a source image: the PNG's own bytes when no conversion is asked, else a
    converted image."""
    if mode is None and size is None and path.suffix.lower() == ".png":
        return png_bytes_checked(path)
    return read_image_checked(path, mode=mode, size=size)
