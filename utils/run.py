"""Run directories: ``<checkpoint_dir>/<name>/`` holds everything one training run produced.

Layout: ``opts.yaml`` (every flag plus the model name, options and class count), ``train.log``,
``metrics.csv``, ``loss_curve.png``, ``last.pth`` and ``net_<epoch>.pth``. ``opts.yaml`` is what
lets ``test.py``, ``export.py`` and a distilling student rebuild exactly the trained network.
"""
import shutil
from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch
import yaml

from .checkpoint import atomic_write_text, load_checkpoint, load_model_state
from .errors import UserError

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
    from models import build_model

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


def check_input_size(model: torch.nn.Module, h: int, w: int, model_name: str) -> None:
    """Run ``model`` once on an ``h``×``w`` zero image, so an input size its strided layers cannot
    take is one clear error before any work starts rather than a traceback from deep inside the
    network (the accepted sizes differ between backbones; multiples of 32 always work).
    Leaves the model's train/eval mode, buffers and the RNG untouched."""
    was_training = model.training
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, h, w, device=device))
    except RuntimeError as err:
        raise UserError(f"--h {h} --w {w}: {model_name} cannot take {h}x{w} inputs "
                        f"({str(err).splitlines()[0]}); use multiples of 32 such as 256") from None
    finally:
        model.train(was_training)
