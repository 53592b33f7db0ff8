"""File names inside a run directory, shared by the code that writes runs and the code that reads them."""
import os
import shlex
from pathlib import Path
from typing import List, Union

from utils.errors import UserError

OPTS_FILE = "opts.yaml"
LAST_CHECKPOINT = "last.pth"


def checkpoint_name(which_epoch: Union[str, int]) -> str:
    """``'last'`` → ``last.pth``; an epoch number N → ``net_N.pth``."""
    if str(which_epoch) == "last":
        return LAST_CHECKPOINT
    try:
        return f"net_{int(which_epoch):03d}.pth"
    except ValueError:
        raise UserError(f"which_epoch must be 'last' or an epoch number, got {which_epoch!r}") from None


def saved_checkpoints(run_dir: Union[str, Path]) -> List[str]:
    """File names of the checkpoints in ``run_dir``: ``last.pth`` first, then ``net_<epoch>.pth``."""
    run_dir = Path(run_dir)
    last = [LAST_CHECKPOINT] if (run_dir / LAST_CHECKPOINT).is_file() else []
    return last + sorted(p.name for p in run_dir.glob("net_*.pth"))


def run_folder(checkpoint_dir: Union[str, Path], name: str) -> Path:
    """``<checkpoint_dir>/<name>``, for a ``--name`` that stays inside ``--checkpoint_dir``."""
    if not Path(name).parts or Path(name).is_absolute() or ".." in Path(name).parts:
        raise UserError(f"--name {name!r} must be a relative folder name inside --checkpoint_dir, without '..'")
    return Path(checkpoint_dir) / name


def set_aside_path(run_dir: Union[str, Path]) -> Path:
    """Where ``--overwrite`` keeps the run it replaces until the new run has its first checkpoint."""
    run_dir = Path(run_dir)
    return run_dir.with_name(f".{run_dir.name}.replaced")


def set_aside_note(run_dir: Union[str, Path]) -> str:
    """A sentence (starting with '; ') saying where a run set aside by an interrupted ``--overwrite``
    is and how to restore it; '' when there is none."""
    aside = set_aside_path(run_dir)
    if not os.path.lexists(aside):
        return ""
    run, kept = shlex.quote(str(run_dir)), shlex.quote(str(aside))
    return (f"; an interrupted --overwrite left the run it was replacing in {aside}: restore it with "
            f"`rm -rf {run} && mv {kept} {run}`, or run train.py --overwrite again (it keeps {aside.name} until "
            f"the new run has its first checkpoint)")
