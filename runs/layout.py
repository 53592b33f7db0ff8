"""File names inside a run directory, shared by the code that writes runs and the code that reads them."""
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
