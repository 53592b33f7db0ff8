"""One-time conversion of checkpoints written by earlier versions of this project.

Run checkpoints are loaded weights-only: tensors, numbers, strings and containers, nothing that
could run code. Earlier versions stored NumPy's RNG state as a pickled ``ndarray``, which that
loading refuses. This tool reads such a file weights-only too, allowing besides exactly the NumPy
types that state needs (the array, its dtype and NumPy's array rebuilding function): it never
runs code from a file, so any other object is refused and the file left as it was. It moves the
RNG state to the weights-only layout and rewrites the file atomically. Files already in the new
layout are left untouched.

    python -m runs.upgrade checkpoints/RUN/last.pth [checkpoints/RUN/net_300.pth ...]
"""
import argparse
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError, exit_on_user_error, first_line
from utils.files import ExecutableContentError, check_torch_archive, read_torch_file, save_checkpoint

from .checkpoints import numpy_rng_entry

try:  # NumPy 2 keeps the array rebuilding function in numpy._core, NumPy 1 in numpy.core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - NumPy 1
    from numpy.core.multiarray import _reconstruct

# What a pickled ``np.random.get_state()`` needs, under the names NumPy 1 and NumPy 2 pickle it with.
LEGACY_GLOBALS = [(_reconstruct, "numpy._core.multiarray._reconstruct"),
                  (_reconstruct, "numpy.core.multiarray._reconstruct"),
                  np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def rng_state_from_legacy(old: dict) -> dict:
    """Convert the ``"rng"`` entry of checkpoints written before the weights-only layout, whose
    ``"numpy"`` is ``np.random.get_state()``'s tuple; the other entries are kept as they are."""
    return {**old, "numpy": numpy_rng_entry(old["numpy"])}


def load_legacy(path: Path) -> dict:
    """The checkpoint at ``path`` read weights-only plus :data:`LEGACY_GLOBALS`; anything else in it
    is refused without being run."""
    check_torch_archive(path, "checkpoint")
    try:
        with torch.serialization.safe_globals(LEGACY_GLOBALS):
            legacy = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(f"{path} holds objects that no version of this project writes ({first_line(err)}); "
                        f"not converted, and nothing in it was run") from None
    except Exception as err:  # torch raises several types for damaged files
        raise UserError(f"{path} is unreadable (truncated or not a PyTorch file): {first_line(err)}") from None
    if not isinstance(legacy, dict) or "model" not in legacy:
        raise UserError(f"{path} is not a checkpoint of this project (expected a dict with a 'model' entry)")
    return legacy


def upgrade_checkpoint(path: Path) -> bool:
    """Rewrite ``path`` in the weights-only layout; False when it already was in it."""
    try:
        read_torch_file(path, "checkpoint")
        return False
    except ExecutableContentError:
        pass
    legacy = load_legacy(path)
    try:
        if "rng" in legacy:
            legacy["rng"] = rng_state_from_legacy(legacy["rng"])
    except (TypeError, ValueError, KeyError) as err:
        raise UserError(f"{path}: its RNG state is not NumPy's get_state() tuple ({first_line(err)}); "
                        f"not converted") from None
    buffer = io.BytesIO()
    torch.save(legacy, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path} holds NumPy arrays beyond the RNG state, which no version of this project "
                        f"writes; not converted") from None
    save_checkpoint(legacy, path)
    return True


@exit_on_user_error
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="checkpoints (.pth) to convert in place")
    args = parser.parse_args(argv)
    for path in args.files:
        print(f"{path}: {'converted' if upgrade_checkpoint(path) else 'already loads weights-only; unchanged'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
