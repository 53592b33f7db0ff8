"""Class-folder scanning and image decoding that fail early with one clear :class:`UserError`.

Both benchmarks store one folder per class (a 4-digit place id) holding that class's images.
Every problem with the files — a misspelled root, a missing view folder, an empty class, a
corrupt file — is reported with the offending path and what was expected, and image decoding
errors are caught where the file is opened, so a DataLoader worker never dies on a traceback
from deep inside PIL. A bad argument value is a ValueError naming the parameter.
"""
import difflib
import os
import stat
import struct
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

from utils.errors import UserError

# The raster formats Pillow decodes natively; files with other extensions are not images.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm",
                  ".pgm", ".pbm", ".pnm", ".tga")
BAD_IMAGE_MODES = ("error", "skip")
DATASETS = ("university", "sues")
SUES_ALTITUDES = (150, 200, 250, 300)  # flight altitudes in metres, one folder each in SUES-200
_EXTENSION_LIST = "/".join(IMG_EXTENSIONS)

# What decoders raise on damaged files: OSError (incl. UnidentifiedImageError and "image file is
# truncated"), SyntaxError (broken PNG chunks), struct.error/IndexError/ValueError/EOFError (short
# headers), DecompressionBombError (absurd dimensions).
_DECODE_ERRORS = (OSError, SyntaxError, struct.error, IndexError, ValueError, EOFError,
                  Image.DecompressionBombError)


class BadImageError(UserError):
    """An image file that cannot be decoded; the message names the file."""

    def __init__(self, message: str):
        # A DataLoader re-raises a worker's exception as ``type(err)("Caught ... in DataLoader worker
        # ...\nOriginal Traceback ...\n<module>.BadImageError: <message>")``; keep the one-line
        # original so entry points still print a single ``error: ...`` line.
        marker = f"{type(self).__name__}: "
        if "\nOriginal Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def check_bad_image_mode(on_bad_image: str) -> str:
    if on_bad_image not in BAD_IMAGE_MODES:
        raise ValueError(f"on_bad_image={on_bad_image!r}: expected one of {', '.join(BAD_IMAGE_MODES)} "
                         "('skip' leaves unreadable images out)")
    return on_bad_image


def is_image_file(path) -> bool:
    return Path(path).suffix.lower() in IMG_EXTENSIONS


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _suggestion(path: Path) -> str:
    """Hint for a missing ``path``: a similarly named sibling of its first missing component, or
    the same name one level deeper (a dataset root given where its train/ or test/ was meant)."""
    missing, parent = path, path.parent
    while not parent.is_dir():
        if parent == parent.parent:
            return ""
        missing, parent = parent, parent.parent
    if missing.name.startswith(("query_", "gallery_")) and all((parent / v).is_dir() for v in ("satellite", "drone")):
        test = parent.parent.parent / "test" / parent.name if parent.parent.name == "train" else parent.parent / "test"
        where = f"; did you mean {test}?" if test.is_dir() else ""
        return f" ({parent} holds satellite/ and drone/: a training folder, not a test folder){where}"
    siblings = sorted(p for p in parent.iterdir() if p.is_dir() and _visible(p))
    close = difflib.get_close_matches(missing.name, [p.name for p in siblings], n=1, cutoff=0.6)
    if close:
        return f"; did you mean {parent / close[0]}?"
    deeper = [str(p / missing.name) for p in siblings if (p / missing.name).is_dir()]
    if deeper:
        return f"; did you mean {' or '.join(deeper)}?"
    return f" ({missing} does not exist)" if missing != path else ""


def require_dir(path, expected: str) -> Path:
    """Return ``path`` if it is a folder, else raise a UserError saying what was expected there."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{path} is not a folder; expected {expected}")
    raise UserError(f"{path} not found; expected {expected}{_suggestion(path)}")


def list_images(folder: Path) -> List[Path]:
    """Image files of a class folder (any case of the extension), sorted by name."""
    return sorted((p for p in folder.iterdir() if _visible(p) and is_image_file(p) and not p.is_dir()),
                  key=lambda p: p.name)


def scan_classes(view_dir, expected: str) -> Dict[str, List[Path]]:
    """Map each class folder name under ``view_dir`` (sorted) to its sorted image paths.

    Symlinked folders and files are followed; hidden entries and non-image files are ignored.
    ``expected`` describes the folder for the error messages.
    """
    view_dir = require_dir(view_dir, expected)
    classes = sorted((p for p in view_dir.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)
    if not classes:
        raise UserError(f"{view_dir} has no class folders; expected {expected}, one sub-folder per class "
                        f"holding {_EXTENSION_LIST} images")
    images = {}
    for folder in classes:
        images[folder.name] = list_images(folder)
        if not images[folder.name]:
            raise UserError(f"class folder {folder} has no images; expected {_EXTENSION_LIST} files")
    return images


def dataset_split_dir(data_dir, dataset: str, altitude, expected: str) -> Path:
    """The folder of one split: ``data_dir`` itself for University-1652, ``data_dir/<altitude>``
    for SUES-200 (whose splits hold one folder per flight altitude)."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r}: expected one of {', '.join(DATASETS)}")
    data_dir = require_dir(data_dir, expected)
    if dataset == "university":
        return data_dir
    available = sorted((p.name for p in data_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=int)
    listing = ", ".join(available) or "none"
    if not str(altitude).isdigit():
        raise ValueError(f"altitude={altitude!r}: SUES-200 needs a flight altitude in metres; "
                         f"altitude folders in {data_dir}: {listing}")
    if str(altitude) not in available and data_dir.name in map(str, SUES_ALTITUDES):
        raise UserError(f"{data_dir} is already the folder of altitude {data_dir.name}; pass its parent "
                        f"({data_dir.parent}) with the altitude given separately (SUES-200 keeps one folder "
                        f"per altitude under train/ and test/)")
    if str(altitude) not in available:
        raise UserError(f"no folder {data_dir / str(altitude)} for altitude {altitude}; "
                        f"altitude folders in {data_dir}: {listing}{_suggestion(data_dir / str(altitude))}")
    return data_dir / str(altitude)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB copy of any PIL mode.

    16/32-bit greyscale is scaled to 8 bits (``convert`` would clip every value above 255 to
    white); palette images with transparency go through RGBA; alpha is dropped, keeping colours,
    as torchvision's own loader does.
    """
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L")
    elif image.mode == "PA" or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    return image.convert("RGB")


def _open_regular(path):
    """``path`` opened for reading if it is a regular file (after symlinks), else an OSError.

    Opening is non-blocking, so a FIFO or device named like an image is refused at once instead of
    waiting forever for a writer; only a regular file is an image.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def load_rgb(path) -> Image.Image:
    """Decode ``path`` completely and return it as RGB; a damaged file, or anything but a regular
    file, raises BadImageError."""
    try:
        with _open_regular(path) as file, Image.open(file) as image:
            image.load()  # decode now: truncation only shows up while reading the pixel data
            return to_rgb(image)
    except _DECODE_ERRORS as err:
        raise BadImageError(f"cannot read image {path} ({type(err).__name__}: {err}); "
                            f"expected a complete {_EXTENSION_LIST} image") from err


def try_load_rgb(path, on_bad_image: str) -> Optional[Image.Image]:
    """``load_rgb``, except that with ``on_bad_image='skip'`` a bad file warns and gives None.

    Python's warning registry shows each message once per process, and the message names the
    file, so every bad file is reported once.
    """
    try:
        return load_rgb(path)
    except BadImageError as err:
        if on_bad_image == "error":
            raise
        warnings.warn(f"skipping: {err}", stacklevel=2)
        return None
