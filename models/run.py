"""Run directories: ``<checkpoint_dir>/<name>/`` holds everything one training run produced.

Layout: ``opts.yaml`` (every flag plus the model name, options and class count), ``train.log``,
``metrics.csv``, ``loss_curve.png``, ``last.pth`` and ``net_<epoch>.pth``. ``opts.yaml`` is what
lets ``test.py``, ``export.py`` and a distilling student rebuild exactly the trained network.
"""
from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch
import yaml

from utils.errors import UserError
from utils.files import PathLike

from ._helpers import load_model_state
from .registry import build_model

OPTS_FILE = "opts.yaml"
LAST_CHECKPOINT = "last.pth"


def checkpoint_name(which_epoch: Union[str, int]) -> str:
    """``'last'`` → ``last.pth``; an epoch number N → ``net_N.pth``."""
    if str(which_epoch) == "last":
        return LAST_CHECKPOINT
    try:
        return f"net_{int(which_epoch):03d}.pth"
    except ValueError:
        raise UserError(f"--which_epoch must be 'last' or an epoch number, got {which_epoch!r}") from None


def saved_checkpoints(run_dir: Union[str, Path]) -> List[str]:
    """File names of the checkpoints in ``run_dir``: ``last.pth`` first, then ``net_<epoch>.pth``."""
    run_dir = Path(run_dir)
    last = [LAST_CHECKPOINT] if (run_dir / LAST_CHECKPOINT).is_file() else []
    return last + sorted(p.name for p in run_dir.glob("net_*.pth"))


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


def load_opts(run_dir: Union[str, Path]) -> dict:
    path = Path(run_dir) / OPTS_FILE
    if not path.is_file():
        raise UserError(f"{path} does not exist; expected a run directory written by train.py")
    try:
        opts = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {err}") from None
    for key in ("model", "num_classes", "model_options"):
        if not isinstance(opts, dict) or key not in opts:
            raise UserError(f"{path} has no {key!r} entry; expected opts.yaml written by train.py")
    return opts


def resolve_run(path: Union[str, Path], which_epoch: Union[str, int] = "last") -> Tuple[Path, Path]:
    """Accept a run directory or a checkpoint file inside one; return (run_dir, checkpoint_path)."""
    path = Path(path)
    if path.is_dir():
        return path, path / checkpoint_name(which_epoch)
    if path.is_file():
        return path.parent, path
    raise UserError(f"{path} is neither a run directory nor a checkpoint file")


def load_trained_model(path: Union[str, Path], which_epoch: Union[str, int] = "last",
                       map_location="cpu", opts: Optional[dict] = None):
    """Rebuild a trained single-view network from its run directory and load its weights.

    Returns ``(model, opts, checkpoint)``; the model is on CPU in eval mode.
    """
    run_dir, ckpt_path = resolve_run(path, which_epoch)
    opts = opts or load_opts(run_dir)
    if not ckpt_path.is_file():
        available = ", ".join(saved_checkpoints(run_dir)) or "none"
        raise UserError(f"checkpoint {ckpt_path} does not exist; checkpoints in {run_dir}: {available}")
    model = build_model(opts["model"], opts["num_classes"], **opts["model_options"])
    checkpoint = load_checkpoint(ckpt_path, map_location=map_location)
    trained_classes = checkpoint.get("num_classes", opts["num_classes"])
    if trained_classes != opts["num_classes"]:
        raise UserError(f"checkpoint {ckpt_path} was trained with {trained_classes} classes but "
                        f"{run_dir / OPTS_FILE} says {opts['num_classes']}; the file belongs to another run")
    load_model_state(model, checkpoint["model"], ckpt_path, opts["model"])
    return model.eval(), opts, checkpoint
