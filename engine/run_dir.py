"""Creating a run directory for training: never clobber a run unless asked to."""
import shutil
from pathlib import Path
from typing import Union

import yaml

from models.run import LAST_CHECKPOINT, OPTS_FILE
from utils.errors import UserError
from utils.files import atomic_write_text


def prepare_run_dir(checkpoint_dir: Union[str, Path], name: str, resume: bool, overwrite: bool) -> Path:
    """Create the run directory, refusing to clobber an existing run unless asked to.

    An existing run is kept intact unless ``--overwrite``; ``--resume`` needs one to exist.
    ``name`` must stay inside ``checkpoint_dir``: ``--overwrite`` deletes the run directory.
    """
    if not Path(name).parts or Path(name).is_absolute() or ".." in Path(name).parts:
        raise UserError(f"--name {name!r} must be a relative folder name inside --checkpoint_dir, without '..'")
    run_dir = Path(checkpoint_dir) / name
    has_run = (run_dir / OPTS_FILE).exists() or (run_dir / LAST_CHECKPOINT).exists()
    if resume:
        if not (run_dir / LAST_CHECKPOINT).exists():
            hint = (" (the run stopped before its first checkpoint; start it again with --overwrite)"
                    if has_run else "")
            raise UserError(f"--resume: {run_dir / LAST_CHECKPOINT} does not exist; nothing to resume{hint}")
        return run_dir
    if has_run:
        if not overwrite:
            raise UserError(
                f"run directory {run_dir} already holds a run; pass --resume to continue it or "
                f"--overwrite to replace it (or choose another --name)"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def save_opts(run_dir: Path, opts: dict) -> None:
    atomic_write_text(Path(run_dir) / OPTS_FILE, yaml.safe_dump(opts, sort_keys=True))
