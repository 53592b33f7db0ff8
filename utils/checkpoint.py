"""Crash-safe checkpoint files.

A training run on the real data lasts days; a process killed while writing must never leave a
half-written ``last.pth``. Every file is written to a temporary sibling, flushed to disk, then
renamed over the target (``os.replace`` is atomic on POSIX), so readers see the old file or the
new one, never a mix.
"""
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Union

import torch

from .errors import UserError

PathLike = Union[str, os.PathLike]


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(obj: Any, path: PathLike) -> None:
    """``torch.save`` made atomic: serialize in memory, then write through a rename."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


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
