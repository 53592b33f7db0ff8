"""Crash-safe checkpoint files.

A training run on the real data lasts days; a process killed while writing must never leave a
half-written ``last.pth``. Every file is written to a temporary sibling ``.<name>.<random>.tmp``,
flushed to disk, then renamed over the target (``os.replace`` is atomic on POSIX), so readers see
the old file or the new one, never a mix. The folder is flushed too, so the rename itself survives
a power cut. A process killed between the write and the rename leaves only the temporary file,
which :func:`remove_temporaries` clears on the next start.
"""
import os
import secrets
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Union

import torch

from .errors import UserError

PathLike = Union[str, os.PathLike]
TEMPORARY_GLOB = ".*.tmp"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(file)`` on a temporary sibling of ``path``, flush it to disk, rename it over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 lets the umask decide the permissions, as for any other file the run
    # writes (tempfile.mkstemp would make checkpoints private to their owner).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_temporaries(folder: PathLike) -> List[Path]:
    """Delete the temporary files that writes killed before their rename left in ``folder``."""
    removed = sorted(Path(folder).glob(TEMPORARY_GLOB))
    for path in removed:
        path.unlink()
    return removed


def save_checkpoint(obj: Any, path: PathLike) -> None:
    """``torch.save`` made atomic: stream into the temporary file, then rename.

    Streaming (rather than serializing into memory first) keeps a BNext-L checkpoint with its
    optimizer state from briefly doubling the process's memory at every save.
    A failed write (disk full, quota, permissions) leaves the previous file untouched and is
    reported as a :class:`UserError`, since freeing space and resuming is all it takes.
    """
    try:
        _atomic_write(path, lambda f: torch.save(obj, f))
    except OSError as err:
        raise UserError(f"cannot write checkpoint {path} ({err.strerror or err}); the previous file is "
                        f"intact") from None


def nonfinite_entries(state_dict: Dict[str, Any]) -> List[str]:
    """Names of the floating-point tensors of ``state_dict`` that hold a NaN or an infinity."""
    return [name for name, value in state_dict.items()
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()]


def load_checkpoint(path: PathLike, map_location="cpu") -> dict:
    """Load a checkpoint dict, turning a missing, truncated or foreign file into a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises several types for truncated or non-torch files
        raise UserError(f"checkpoint {path} is unreadable (truncated or not a PyTorch file): {err}") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise UserError(f"checkpoint {path} is not a BiCrossNet checkpoint (expected a dict with a 'model' entry)")
    return obj


def load_model_state(model: torch.nn.Module, state_dict: dict, source: PathLike, model_name: str) -> None:
    """Strictly load ``state_dict``; a mismatch says which model and file disagree, not a PyTorch dump."""
    result = _strict_mismatch(model, state_dict)
    if result:
        raise UserError(f"checkpoint {source} does not match model {model_name!r}: {result}")
    model.load_state_dict(state_dict, strict=True)


def _strict_mismatch(model: torch.nn.Module, state_dict: dict) -> str:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape)):
        if items:
            shown = ", ".join(items[:3]) + (f" … (+{len(items) - 3} more)" if len(items) > 3 else "")
            parts.append(f"{len(items)} {label} ({shown})")
    return "; ".join(parts)
