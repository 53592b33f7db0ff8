"""Use checkpoints of the original MCCG and BiCrossNet code here: convert one into a run directory.

    python -m runs.convert model/three_view_long/net_119.pth --name mccg_teacher
    python -m runs.convert student/net_199.pth --name released_student --dataset sues --altitude 150

FILE is a ``net_XXX.pth`` of the original ``train.py`` (a bare state dict) or the folder holding
them (the highest epoch is taken, as the original ``test.py`` does). The layout is detected from
the keys (``--format`` insists on one); see :mod:`runs.original_formats`. The run directory
``<checkpoint_dir>/<name>/`` gets ``opts.yaml`` and ``last.pth`` (weights only, no optimizer
state), so ``test.py``, ``export.py`` and ``train.py --teacher_path`` take it. ``models.load_run``
and ``--teacher_path`` also take an original file (or a folder with the original's options file)
directly, converting it in memory.
"""
import argparse
import re
import warnings
from pathlib import Path
from typing import Optional, Tuple, Union

import yaml

from datasets import DATASETS, SUES_ALTITUDES
from utils.cli import add_checkpoint_dir
from utils.errors import UserError, exit_on_user_error
from utils.files import PathLike, atomic_write_text, read_torch_file, save_checkpoint

from models._helpers import _state_dict_in

from .original_formats import DEFAULT_SIZE, FORMATS, Converted, convert_state
from .layout import LAST_CHECKPOINT, OPTS_FILE, checkpoint_name

# Options files the original train.py scripts write beside their checkpoints (MCCG: opts.yaml,
# BiCrossNet: opt.yaml); their keys, unlike this project's, include these.
ORIGINAL_OPTS_FILES = (OPTS_FILE, "opt.yaml")
ORIGINAL_OPTS_KEYS = ("nclasses", "views")
_EPOCH = re.compile(r"net_(\d+)\.pth")


def original_opts(folder: PathLike) -> Optional[dict]:
    """The options the original ``train.py`` saved in ``folder``, or None where there are none."""
    for name in ORIGINAL_OPTS_FILES:
        path = Path(folder) / name
        try:
            opts = yaml.safe_load(path.read_text()) if path.is_file() else None
        except yaml.YAMLError:
            continue
        if isinstance(opts, dict) and "model_options" not in opts and any(k in opts for k in ORIGINAL_OPTS_KEYS):
            return opts
    return None


def is_original(path: PathLike) -> bool:
    """Whether ``path`` is no run of this project: a checkpoint file without opts.yaml beside it,
    or a folder (or a file in one) whose options file the original code wrote."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if original_opts(folder) is not None:
        return True
    return path.is_file() and not (folder / OPTS_FILE).is_file()


def original_checkpoint(path: PathLike, which_epoch: Union[str, int] = "last") -> Path:
    """The checkpoint file of ``path``: itself, or in a folder ``net_<epoch>.pth`` (the highest
    epoch for 'last', as the original test.py picks it)."""
    path = Path(path)
    if not path.is_dir():
        return path
    if str(which_epoch) != "last":
        return path / checkpoint_name(which_epoch)
    saved = sorted(path.glob("net_*.pth"))
    if not saved:
        raise UserError(f"{path} holds no net_*.pth checkpoint of the original train.py")
    return saved[-1]


def read_original(path: PathLike, fmt: str = "auto", map_location="cpu") -> Converted:
    """Read an original checkpoint file weights-only and convert it (see ``convert_state``)."""
    state = _state_dict_in(read_torch_file(path, "checkpoint", map_location), path, "checkpoint")
    return convert_state(state, fmt, path)


def converted_opts(converted: Converted, source: Path, h: int, w: int, dataset: Optional[str] = None,
                   altitude: Optional[int] = None, name: Optional[str] = None) -> dict:
    """opts.yaml of a converted run: what test.py, export.py and a distilling student read."""
    return {"model": converted.model_name, "model_options": converted.model_options,
            "num_classes": converted.num_classes, "dataset": dataset, "altitude": altitude, "h": h, "w": w,
            "views": converted.views, "args": {"name": name or source.stem},
            "converted_from": {"file": str(source), "format": converted.format, "notes": list(converted.notes)}}


def converted_checkpoint(converted: Converted, source: Path) -> dict:
    """last.pth of a converted run; the epoch is the original file's, where its name gives it."""
    match = _EPOCH.fullmatch(source.name)
    return {"model": converted.model.state_dict(), "epoch": int(match.group(1)) if match else None,
            "num_classes": converted.num_classes, "model_name": converted.model_name,
            "converted_from": str(source)}


def input_size(converted: Converted, folder: Path) -> Tuple[int, int]:
    """The original run's own input size where its options file records one, else its code's default."""
    opts = original_opts(folder) or {}
    default = DEFAULT_SIZE[converted.format]
    return int(opts.get("h", default)), int(opts.get("w", default))


def load_original(path: PathLike, which_epoch: Union[str, int] = "last", map_location="cpu"):
    """``runs.checkpoints.load_trained_model`` for an original checkpoint: ``(model, opts, checkpoint)``,
    converted in memory; where this project's forward may differ, a warning says how."""
    source = original_checkpoint(path, which_epoch)
    converted = read_original(source, map_location=map_location)
    for note in converted.notes:
        warnings.warn(f"{source}: {note}", stacklevel=2)
    h, w = input_size(converted, source.parent)
    return converted.model, converted_opts(converted, source, h, w), converted_checkpoint(converted, source)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runs.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="original checkpoint (net_XXX.pth) or the folder holding them")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS],
                   help="layout of FILE; auto detects it from the keys")
    p.add_argument("--name", required=True, help="run name; the run directory is <checkpoint_dir>/<name>/")
    add_checkpoint_dir(p)
    p.add_argument("--dataset", default="university", choices=DATASETS, help="dataset the checkpoint was trained on")
    p.add_argument("--altitude", type=int, default=None, choices=SUES_ALTITUDES, help="SUES-200 altitude")
    p.add_argument("--h", type=int, default=None, help="input height (default: the original run's, else 256 for "
                                                       "MCCG and 384 for the BiCrossNet student)")
    p.add_argument("--w", type=int, default=None, help="input width (default as --h)")
    return p


def run_directory(args) -> Path:
    """The new run directory, checked before any slow work: inside --checkpoint_dir and not a run yet."""
    name = Path(args.name)
    if not name.parts or name.is_absolute() or ".." in name.parts:
        raise UserError(f"--name {args.name!r} must be a relative folder name inside --checkpoint_dir, without '..'")
    if args.dataset == "sues" and args.altitude is None:
        raise UserError("--dataset sues needs --altitude (150, 200, 250 or 300)")
    if args.dataset != "sues" and args.altitude is not None:
        raise UserError("--altitude applies to --dataset sues only")
    if any(size is not None and size < 1 for size in (args.h, args.w)):
        raise UserError("--h and --w must be positive integers")
    run_dir = Path(args.checkpoint_dir) / name
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(f"{run_dir} already exists and is not empty; choose another --name")
    return run_dir


@exit_on_user_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = run_directory(args)
    source = original_checkpoint(args.file)
    converted = read_original(source, args.format)
    h, w = input_size(converted, source.parent)
    opts = converted_opts(converted, source, args.h or h, args.w or w, args.dataset, args.altitude, args.name)
    save_checkpoint(converted_checkpoint(converted, source), run_dir / LAST_CHECKPOINT)
    atomic_write_text(run_dir / OPTS_FILE, yaml.safe_dump(opts, sort_keys=True))
    print(f"{source}: {converted.format} checkpoint -> {converted.model_name} "
          f"({converted.num_classes} classes, {opts['h']}x{opts['w']}), written to {run_dir}")
    for note in converted.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
