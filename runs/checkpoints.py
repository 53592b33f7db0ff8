"""Run directories: ``<checkpoint_dir>/<name>/`` holds everything one training run produced.

Layout: ``opts.yaml`` (every flag plus the model name, options and class count), ``train.log``,
``metrics.csv``, ``loss_curve.png``, ``last.pth`` and ``net_<epoch>.pth``. ``opts.yaml`` is what
lets ``test.py``, ``export.py`` and a distilling student rebuild exactly the trained network.
"""
from pathlib import Path
from typing import Mapping, Optional, Tuple, Union

import numpy as np
import torch
import yaml

from datasets import DATASETS, SUES_ALTITUDES
from models import build_model
from models._helpers import load_model_state
from utils.errors import UserError, first_line
from utils.files import PathLike, read_torch_file

from .convert import is_original, load_original
from .layout import OPTS_FILE, checkpoint_name, saved_checkpoints, set_aside_note

# opts.yaml (and a packed file's meta) can be edited or planted by anyone with write access to a
# run folder; its values size the network that is built and choose the test protocol, so values of
# the wrong type or outside what a run can hold are refused before anything is built or written.
# The class bound is far above both benchmarks (University-1652: 701 training classes, SUES-200:
# 120) and far below a classifier that would not fit in memory.
MAX_CLASSES = 100_000
MAX_SIDE = 8192  # pixels


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_network_entries(opts: Mapping, path: Path) -> None:
    """Refuse ``opts`` whose model, model_options, num_classes, h, w, dataset or altitude have the
    wrong type or an impossible value; ``path`` names the file in the error."""
    problems = []
    if not isinstance(opts.get("model"), str):
        problems.append(f"model {opts.get('model')!r} (expected a model name)")
    if not isinstance(opts.get("model_options"), dict):
        problems.append(f"model_options {opts.get('model_options')!r} (expected a mapping)")
    classes = opts.get("num_classes")
    if not (_is_int(classes) and 1 <= classes <= MAX_CLASSES):
        problems.append(f"num_classes {classes!r} (expected an integer from 1 to {MAX_CLASSES})")
    for key in ("h", "w"):
        if not (_is_int(opts.get(key)) and 1 <= opts[key] <= MAX_SIDE):
            problems.append(f"{key} {opts.get(key)!r} (expected an integer from 1 to {MAX_SIDE})")
    if opts.get("dataset") is not None and opts.get("dataset") not in DATASETS:
        problems.append(f"dataset {opts.get('dataset')!r} (expected one of {', '.join(DATASETS)})")
    if opts.get("altitude") is not None and opts.get("altitude") not in SUES_ALTITUDES:
        problems.append(f"altitude {opts.get('altitude')!r} (expected one of {', '.join(map(str, SUES_ALTITUDES))})")
    if "args" in opts and not isinstance(opts["args"], dict):
        problems.append(f"args of type {type(opts['args']).__name__} (expected a mapping of flags)")
    if problems:
        raise UserError(f"{path} has impossible entries: {'; '.join(problems)}")


def load_checkpoint(path: PathLike, map_location="cpu") -> dict:
    """Load a checkpoint dict without running code from it (weights-only); a missing, truncated,
    foreign or executable file is a one-line :class:`UserError`."""
    obj = read_torch_file(path, "checkpoint", map_location, upgradable=True)
    if not isinstance(obj, dict) or "model" not in obj:
        raise UserError(f"checkpoint {path} is not a BiCrossNet checkpoint (expected a dict with a 'model' entry)")
    return obj


def numpy_rng_entry(state: tuple) -> dict:
    """``np.random.get_state()``'s tuple in the checkpoint's weights-only types (uint32 keys fit
    int64 exactly)."""
    algorithm, keys, pos, has_gauss, cached_gaussian = state
    return {"algorithm": str(algorithm), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def load_opts(run_dir: Union[str, Path]) -> dict:
    path = Path(run_dir) / OPTS_FILE
    if not path.is_file():
        raise UserError(f"{path} does not exist; expected a run directory written by train.py"
                        f"{set_aside_note(run_dir)}")
    try:
        opts = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {first_line(err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is unreadable ({err})") from None
    for key in ("model", "num_classes", "model_options", "h", "w"):
        if not isinstance(opts, dict) or key not in opts:
            raise UserError(f"{path} has no {key!r} entry; expected opts.yaml written by train.py")
    check_network_entries(opts, path)
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

    A checkpoint of the original MCCG or BiCrossNet code (a file without opts.yaml beside it, or
    a folder the original train.py wrote) is converted in memory, so it can serve as a teacher.
    Returns ``(model, opts, checkpoint)``; the model is on CPU in eval mode.
    """
    run_dir, ckpt_path = resolve_run(path, which_epoch)
    if opts is None:
        if is_original(path):
            return load_original(path, which_epoch, map_location)
        opts = load_opts(run_dir)
    if not ckpt_path.is_file():
        available = ", ".join(saved_checkpoints(run_dir)) or "none"
        raise UserError(f"checkpoint {ckpt_path} does not exist; checkpoints in {run_dir}: {available}"
                        f"{set_aside_note(run_dir)}")
    try:
        model = build_model(opts["model"], opts["num_classes"], **opts["model_options"])
    except (ValueError, TypeError) as err:
        raise UserError(f"{run_dir / OPTS_FILE} describes a network that cannot be built ({err})") from None
    checkpoint = load_checkpoint(ckpt_path, map_location=map_location)
    trained_classes = checkpoint.get("num_classes", opts["num_classes"])
    if trained_classes != opts["num_classes"]:
        raise UserError(f"checkpoint {ckpt_path} was trained with {trained_classes} classes but "
                        f"{run_dir / OPTS_FILE} says {opts['num_classes']}; the file belongs to another run")
    load_model_state(model, checkpoint["model"], ckpt_path, opts["model"])
    return model.eval(), opts, checkpoint


def load_run(path: Union[str, Path], which_epoch: Union[str, int] = "last") -> torch.nn.Module:
    """The trained single-view network of a run directory (or of a checkpoint file in one), in eval
    mode on CPU: what a user of a finished run needs, without its opts and checkpoint dict."""
    model, _, _ = load_trained_model(path, which_epoch)
    return model
