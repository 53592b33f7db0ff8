"""One-time conversion of checkpoints written by earlier versions of this project.

Run checkpoints are loaded weights-only: tensors, numbers, strings and containers, nothing that
could run code. Earlier versions stored NumPy's RNG state as a pickled ``ndarray``, which that
loading refuses. This tool loads such a file *unrestricted* — only ever because the user asked,
for a file they trust — moves the RNG state to the weights-only layout and rewrites the file
atomically. Files already in the new layout are left untouched.

    python -m runs.upgrade checkpoints/RUN/last.pth [checkpoints/RUN/net_300.pth ...]
"""
import argparse
import io
from pathlib import Path

import torch

from utils.errors import UserError, exit_on_user_error
from utils.files import ExecutableContentError, read_torch_file, save_checkpoint

from .checkpoints import numpy_rng_entry


def rng_state_from_legacy(old: dict) -> dict:
    """Convert the ``"rng"`` entry of checkpoints written before the weights-only layout, whose
    ``"numpy"`` is ``np.random.get_state()``'s tuple; the other entries are kept as they are."""
    return {**old, "numpy": numpy_rng_entry(old["numpy"])}


def upgrade_checkpoint(path: Path) -> bool:
    """Rewrite ``path`` in the weights-only layout; False when it already was in it."""
    try:
        read_torch_file(path, "checkpoint")
        return False
    except ExecutableContentError:
        pass
    legacy = torch.load(path, map_location="cpu", weights_only=False)  # trusted by the user's request
    if not isinstance(legacy, dict) or "model" not in legacy:
        raise UserError(f"{path} is not a checkpoint of this project (expected a dict with a 'model' entry)")
    if "rng" in legacy:
        legacy["rng"] = rng_state_from_legacy(legacy["rng"])
    buffer = io.BytesIO()
    torch.save(legacy, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except Exception:
        raise UserError(f"{path} holds objects that no version of this project writes; not converted") from None
    save_checkpoint(legacy, path)
    return True


@exit_on_user_error
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="checkpoints (.pth) you trust to convert in place")
    args = parser.parse_args(argv)
    for path in args.files:
        print(f"{path}: {'converted' if upgrade_checkpoint(path) else 'already loads weights-only; unchanged'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
