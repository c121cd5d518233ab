"""What every importer shares: opening the output writer, checked image reading, the bad-input policy.

An importer reads a source in a user's format and writes a dataset folder. It never modifies the source. It
parses the label files completely before creating the output, so a malformed label file fails before anything
is written; an image that cannot be read fails (or, with ``skip_bad``, is skipped and counted) as it is reached.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..core.dataset import DatasetError, DatasetWriter, encode_png
from ..core.options import ImportOptions
from ..core.provenance import provenance_entry
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
    """Create (or resume) the output folder of an import and record its provenance.

    Resuming checks that the earlier run of this stage had the same options (a changed label mode would mix two
    labellings in one folder) and clears the skipped-input counts, which the resumed run counts afresh: bad
    inputs are never written, so every run meets all of them again.
    """
    if overwrite and resume:
        raise ValueError("Pass either overwrite or resume, not both.")
    earlier = _earlier_run(Path(out), stage, config) if resume else []  # checked before anything is written
    mode = "overwrite" if overwrite else "resume" if resume else "create"
    writer = DatasetWriter(out, expressions=expressions, aus=aus, mode=mode, licence=licence)
    if earlier:
        writer.header.stats.pop("skipped", None)
    writer.add_provenance(provenance_entry(stage, config, resumed=bool(earlier)))
    return writer


def _earlier_run(out: Path, stage: str, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The provenance entries of ``stage`` in a folder to resume, refusing (before anything is written) a folder
    another command made, or one this command started with other options."""
    from ..core.dataset import HEADER_FILE, read_header

    if not (out / HEADER_FILE).is_file():
        return []
    header = read_header(out)
    if not header.provenance:  # killed before its first flush: nothing to continue, nothing foreign either
        return []
    earlier = [e for e in header.provenance if e.get("stage") == stage]
    last = header.provenance[-1].get("stage") if header.provenance else None
    if not earlier or last != stage:
        raise DatasetError(f"{out} was made by {last or 'another command'}, not by {stage}; --resume continues an "
                           f"interrupted {stage} run in its own folder. Choose another output folder.")
    before = {k: v for k, v in earlier[-1].get("config", {}).items() if k != "skip_bad"}
    now = {k: v for k, v in config.items() if k != "skip_bad"}
    if before != now:
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        raise DatasetError(
            f"{out} was started by {stage} with other options ({', '.join(f'{k}={before.get(k)!r}' for k in changed)}"
            f"; now {', '.join(f'{k}={now.get(k)!r}' for k in changed)}). Resume with the same options, or "
            "pass --overwrite to start again.")
    return earlier


@contextmanager
def text_file(path: Path) -> Iterator[Any]:
    """Open a label file as UTF-8 text (a BOM tolerated) for the csv module; a file in another encoding, or one the
    csv module cannot parse (a field past its size limit, a NUL byte), raises :class:`BadInputError` naming it."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            yield f
    except UnicodeDecodeError as e:
        raise BadInputError(f"{path}: not UTF-8 text (byte {e.start} is {e.object[e.start:e.start + 1]!r}); save it "
                            "as UTF-8 and import again.") from e
    except csv.Error as e:
        raise BadInputError(f"{path}: not a readable CSV file ({e}); check the file's quoting and line ends.") from e


def check_image_options(image_mode: str | None, image_size: int | None) -> None:
    """Refuse an image mode or size an import cannot write, before the output folder exists."""
    if image_mode is not None and image_mode not in ("L", "RGB"):
        raise ValueError(f"image_mode must be L (8-bit gray) or RGB; got {image_mode!r}.")
    if image_size is not None and not 8 <= image_size <= 4096:
        raise ValueError(f"image_size must lie in 8..4096 pixels; got {image_size}.")


def start_import(
    out: str | Path,
    expressions: Sequence[str],
    stage: str,
    config: dict[str, Any],
    problems: list[tuple[str, str]],
    importing: ImportOptions,
    licence: str = "",
    what: str = "malformed row(s)",
    fix: str = "Fix the file",
) -> tuple[DatasetWriter, BadInputPolicy]:
    """The common start of every importer, once its label files are parsed.

    Args:
        config: the importer's own options, recorded with ``importing``'s reading options in the folder's provenance.
        problems: ``(reason, message)`` for each bad row found while parsing. Without ``importing.skip_bad`` the first
            one is raised here, before the output folder exists; with it, all are counted in the header.
        what, fix: words for the error ("3 malformed row(s) in all. Fix the file, or pass --skip-bad ...").

    Returns:
        the open writer (use it as a context manager) and the bad-input policy for what the import meets later.
    """
    check_image_options(importing.image_mode, importing.image_size)
    config = {**config, "skip_bad": importing.skip_bad, "image_mode": importing.image_mode,
              "image_size": importing.image_size}
    if problems and not importing.skip_bad:
        raise BadInputError(f"{problems[0][1]} ({len(problems)} {what} in all.) {fix}, or pass --skip-bad to "
                            "skip such inputs and count them.")
    writer = open_output(out, expressions, stage, config, overwrite=importing.overwrite, resume=importing.resume,
                         licence=licence)
    bad = BadInputPolicy(writer, importing.skip_bad)
    for reason, message in problems:
        bad(reason, message)
    return writer, bad


_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")
_ID_MAX = 190  # ids may be 200 characters; this leaves room for a de-duplication suffix


def sanitise_id(text: str) -> str:
    """``text`` made a valid record id: runs of other characters become ``_``, leading ``._-`` dropped."""
    return _UNSAFE_ID.sub("_", text).lstrip("._-")[:_ID_MAX] or "image"


class UniqueIds:
    """Hands out sanitised ids, de-duplicated by a ``-2``, ``-3``, ... suffix in call order.

    Deterministic when the calls are (callers iterate sorted inputs). Ids are compared case-insensitively
    because they become file names, and some file systems (macOS, Windows) take ``A.png`` for ``a.png``.
    """

    def __init__(self) -> None:
        self._used: set[str] = set()

    def __call__(self, text: str) -> str:
        base = sanitise_id(text)
        rid, n = base, 2
        while rid.lower() in self._used:
            rid, n = f"{base}-{n}", n + 1
        self._used.add(rid.lower())
        return rid


def normalise_image(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit gray (``L``) or colour (``RGB``), the two modes a dataset folder stores.

    16-bit and 32-bit gray are scaled to 8 bits by their full range (a plain conversion would clip them to white),
    alpha is dropped (transparent pixels keep their colour), palette images become RGB and 1-bit ones L.
    """
    if im.mode in ("L", "RGB"):
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(np.rint(a / top * 255.0), 0, 255).astype(np.uint8), "L")
    if im.mode in ("1", "LA", "La"):
        return im.convert("L")
    return im.convert("RGB")  # RGBA, P, PA, CMYK, YCbCr, LAB, HSV


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
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadInputError(f"{path}: not a readable image ({type(e).__name__}: {e}).") from e
    if box is not None:
        x, y, w, h = box
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(im.width, x + w), min(im.height, y + h)
        if x1 <= x0 or y1 <= y0:
            raise BadInputError(f"{path}: face box {box} lies outside the {im.width}x{im.height} image.")
        im = im.crop((x0, y0, x1, y1))
    im = normalise_image(im)
    if mode is not None and im.mode != mode:
        im = im.convert(mode)
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    return im


def png_bytes_checked(path: Path) -> bytes:
    """Bytes of a PNG file after checking that it decodes: copied as is (fastest, bit-exact) when it is 8-bit gray
    or RGB, else re-encoded by :func:`normalise_image`.

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
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadInputError(f"{path}: corrupt PNG ({type(e).__name__}: {e}).") from e
    if im.mode not in ("L", "RGB"):
        return encode_png(normalise_image(im))
    return data


def image_for_writer(path: Path, mode: str | None, size: int | None) -> Image.Image | bytes:
    """What to hand the writer for a source image: the PNG's own bytes when no conversion is asked, else a
    converted image."""
    if mode is None and size is None and path.suffix.lower() == ".png":
        return png_bytes_checked(path)
    return read_image_checked(path, mode=mode, size=size)
