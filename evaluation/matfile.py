"""Features in University-1652's ``pytorch_result.mat`` layout, for its official evaluation scripts.

Fields: ``query_f``, ``query_label``, ``query_path``, ``gallery_f``, ``gallery_label``,
``gallery_path``. The file is written through a temporary file and an atomic rename: a failure
half-way leaves the previous file as it was.
"""
import os
from pathlib import Path

import scipy.io

from utils.errors import UserError
from utils.files import atomic_write


def portable_path(path: str) -> str:
    """``path`` as text MATLAB files can store: bytes that are not UTF-8 (kept by Python as
    surrogate escapes) become ``\\xNN`` escapes instead of failing the whole export."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def export_mat(path: Path, query_set, query_features, gallery_set, gallery_features) -> None:
    """Write one retrieval direction's descriptors, labels and image paths to ``path``."""
    content = {
        "query_f": query_features.numpy(), "query_label": query_set.labels.numpy(),
        "query_path": [portable_path(p) for p in query_set.paths],
        "gallery_f": gallery_features.numpy(), "gallery_label": gallery_set.labels.numpy(),
        "gallery_path": [portable_path(p) for p in gallery_set.paths],
    }
    try:
        atomic_write(path, lambda f: scipy.io.savemat(f, content))
    except OSError as err:
        raise UserError(f"cannot write {path} ({err.strerror or err}); the previous file is intact") from None
