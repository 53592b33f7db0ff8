"""``train.py``'s parsed flags: the merge with a run's saved flags on ``--resume``, the checks of
their values, and what the run records of them in ``opts.yaml``."""
import argparse
import importlib.util
import math
from pathlib import Path
from typing import Dict, List, Optional

from losses import BiCrossNetLoss
from models import list_models, model_option_names
from optim.unfreeze import BiGradualUnfreezing
from runs.checkpoints import load_opts
from runs.layout import OPTS_FILE
from utils.errors import UserError

__all__ = ["PRESETS", "PROGRESS_CHOICES", "RECIPE_DEFAULTS", "RESUME_OVERRIDES", "RUNTIME_FLAGS", "apply_recipe_defaults",
           "default_weight_decay", "given_flags", "merge_saved_opts", "model_options", "recipe_of", "run_options", "start_warnings",
           "validate"]

# Flags that may differ when a run is resumed; every other flag is taken from the run's opts.yaml.
RESUME_OVERRIDES = ("epochs", "num_workers", "device", "amp", "tf32", "save_every", "keep_last", "max_bad_steps",
                    "data_dir", "teacher_path", "progress", "tensorboard")
PROGRESS_CHOICES = ("auto", "on", "off")
TEACHER_PREFIX = "mccg_convnext_"
# Each recipe's defaults where they differ from the parser's (the student recipe's, docs/method.md §5):
# a model gets its recipe's value for every flag the command line leaves out.
RECIPE_DEFAULTS: Dict[str, Dict[str, object]] = {
    "student": {},
    "teacher": {"optimizer": "sgd", "lr": 0.01, "epochs": 200, "steps": [80, 120], "bigradual_n1": 0,
                "bigradual_n2": 0},
}
# Student presets (docs/method.md §5): what each gives the flags the command line leaves out. The
# parser's defaults are this project's reading of the paper; 'release' is what the released
# BiCrossNet scripts effectively ran (384 px, pooled head input, their MSE distillation, binary
# weights stepped from epoch 21, Lion's lr schedule stepped only after epoch 30).
PRESETS: Dict[str, Dict[str, object]] = {
    "paper": {},
    "release": {"h": 384, "w": 384, "head_input": "pooled", "kd_mode": "mse", "bigradual_n1": 0, "bigradual_n2": 21,
                "lion_schedule_start": 31},
}
# Flags that say how this process starts, never taken from the run's saved ones.
LAUNCH_FLAGS = ("name", "checkpoint_dir", "resume", "overwrite")
RUNTIME_FLAGS = LAUNCH_FLAGS + RESUME_OVERRIDES
POSITIVE_FLAGS = ("batchsize", "epochs", "h", "w", "sample_num", "max_bad_steps")
NON_NEGATIVE_FLAGS = ("num_workers", "save_every", "keep_last", "temperature_decay")


def given_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, argv) -> set:
    """Names of the flags present on the command line, even those repeating their default value.

    argparse fills in a default only where the namespace lacks the attribute, so parsing into a
    namespace of placeholders leaves exactly the absent flags at the placeholder.
    """
    absent = object()
    parsed = parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(vars(args), absent)))
    return {key for key, value in vars(parsed).items() if value is not absent}


def recipe_of(model: str) -> str:
    """The recipe whose defaults ``model`` trains with: 'teacher' for ``mccg_convnext_*``, else 'student'."""
    return "teacher" if model.startswith(TEACHER_PREFIX) else "student"


def apply_recipe_defaults(args: argparse.Namespace, given: set) -> Dict[str, object]:
    """Give every recipe flag absent from ``given`` the value of ``args.model``'s recipe and, for a
    student, of its ``--preset``; returns the values put in."""
    recipe = recipe_of(args.model)
    defaults = {**RECIPE_DEFAULTS[recipe], **(PRESETS[args.preset] if recipe == "student" else {})}
    applied = {key: value for key, value in defaults.items() if key not in given}
    for key, value in applied.items():
        setattr(args, key, list(value) if isinstance(value, list) else value)
    return applied


def merge_saved_opts(args: argparse.Namespace, given: set) -> argparse.Namespace:
    """On ``--resume`` the run's own settings win; runtime flags given on the command line override
    them, and any other given flag must agree with the run (changing --h or --model mid-run would
    silently be ignored otherwise). Saved keys that are no longer flags are ignored; flags that an
    older opts.yaml lacks take the run's recipe default (the parser's, for a student)."""
    opts_path = Path(args.checkpoint_dir) / args.name / OPTS_FILE
    opts = load_opts(opts_path.parent)
    if "converted_from" in opts:
        raise UserError(f"{opts_path.parent} was converted from {opts['converted_from'].get('file')} and holds weights "
                        f"only, no training state to resume; evaluate it (test.py), export it, or distil from it "
                        f"(--teacher_path)")
    saved = opts.get("args", {})
    _check_saved_types(saved, vars(args), opts_path)
    conflicts = [f"--{key} {getattr(args, key)!r} (run: {saved[key]!r})" for key in sorted(given)
                 if key not in RUNTIME_FLAGS and key in saved and getattr(args, key) != saved[key]]
    if conflicts:
        raise UserError(f"--resume continues the run of {opts_path} with its own settings, but these flags "
                        f"differ from it: {', '.join(conflicts)}; drop them, or start a new run with another --name")
    merged = vars(args).copy()
    for key, value in saved.items():
        if key in merged and key not in LAUNCH_FLAGS and not (key in RUNTIME_FLAGS and key in given):
            merged[key] = value
    merged["resume"] = True
    merged = argparse.Namespace(**merged)
    apply_recipe_defaults(merged, given | set(saved))
    return merged


def _same_kind(saved, current) -> bool:
    """Could ``saved`` be a value of the flag whose current (parsed or default) value is ``current``?"""
    if saved is None or current is None:
        return True
    if isinstance(current, bool) or isinstance(saved, bool):
        return isinstance(current, bool) and isinstance(saved, bool)
    if isinstance(current, (int, float)):
        return isinstance(saved, (int, float)) and (isinstance(current, float) or isinstance(saved, int))
    return isinstance(saved, type(current))


def _check_saved_types(saved: dict, current: dict, opts_path: Path) -> None:
    """The saved flags of an opts.yaml must have their flags' types (an edited or planted file could
    hold ``epochs: '30'``); one line naming the first that does not."""
    for key, value in saved.items():
        if key in current and not _same_kind(value, current[key]):
            raise UserError(f"{opts_path}: args.{key} is {value!r}, expected a value of type "
                            f"{type(current[key]).__name__} like {current[key]!r}")


def validate(args: argparse.Namespace) -> None:
    """Refuse flag values (or combinations) that argparse's types and choices let through."""
    if args.model not in list_models():
        raise UserError(f"--model {args.model!r} is not a known model; choose one of: {', '.join(list_models())}")
    try:
        BiGradualUnfreezing.check_boundaries(args.bigradual_n1, args.bigradual_n2)
    except ValueError:
        raise UserError(f"--bigradual_n2 ({args.bigradual_n2}) must be >= --bigradual_n1 ({args.bigradual_n1}) "
                        f">= 0") from None
    if args.dataset == "sues" and args.altitude is None:
        raise UserError("--dataset sues needs --altitude (150, 200, 250 or 300)")
    if args.dataset == "sues" and args.views == 3:
        raise UserError("--views 3 trains on street images, which SUES-200 does not have; use --views 2")
    if args.preset != "paper" and recipe_of(args.model) == "teacher":
        raise UserError(f"--preset {args.preset} describes the student recipe; a teacher ({args.model}) trains with "
                        f"MCCG's recipe, so drop --preset")
    if args.extra_Google and args.views != 3:
        raise UserError("--extra_Google adds the google images to the street view: use it with --views 3")
    if args.teacher_path is not None and not Path(args.teacher_path).exists():
        raise UserError(f"--teacher_path {args.teacher_path} does not exist; train a teacher first "
                        f"(train.py --model mccg_convnext_tiny ...) or drop the flag")
    for flag in POSITIVE_FLAGS:
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    for flag in NON_NEGATIVE_FLAGS:
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    _check_numbers(args)
    _check_teacher_is_another_run(args)
    try:
        BiCrossNetLoss.check_distillation(args.kd_weight, args.kd_temperature, args.kd_mode)
    except ValueError as err:
        raise UserError(f"--{err}") from None
    if args.batchsize < 2 and args.triplet_loss > 0:
        raise UserError("--batchsize must be at least 2 classes for the triplet loss (or pass --triplet_loss 0)")
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UserError("--tensorboard needs the tensorboard package (pip install tensorboard), or drop the flag")


def _check_numbers(args: argparse.Namespace) -> None:
    """Values that would train nonsense (gradient ascent after a milestone, NaN weights) are refused."""
    ranges = {"lr": (0, math.inf, False), "gamma": (0, math.inf, False), "lion_lr_ratio": (0, math.inf, False),
              "weight_decay": (0, math.inf, True), "backbone_lr_scale": (0, math.inf, True),
              "erasing_p": (0, 1, True)}
    for flag, (low, high, low_included) in ranges.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"--{flag} must be a number, got {value!r}")
        inside = (value >= low if low_included else value > low) and value <= high and math.isfinite(value)
        if not inside:
            bound = f"{'>=' if low_included else '>'} {low}" + (f" and <= {high}" if high != math.inf else "")
            raise UserError(f"--{flag} must be a finite number {bound}, got {value}")


def _check_teacher_is_another_run(args: argparse.Namespace) -> None:
    if args.teacher_path is None:
        return
    run_dir = (Path(args.checkpoint_dir) / args.name).resolve()
    teacher = Path(args.teacher_path).resolve()
    if teacher == run_dir or run_dir in teacher.parents:
        raise UserError(f"--teacher_path {args.teacher_path} is the run being trained ({run_dir}); "
                        f"distill from another run")


def model_options(args: argparse.Namespace) -> dict:
    """The options of ``--model``'s builder, as saved in opts.yaml (weights files are not part of it)."""
    candidates = {"block": args.block, "head_input": args.head_input, "binarizer": args.binarizer,
                  "temperature": args.temperature}
    accepted = model_option_names(args.model)
    return {k: v for k, v in candidates.items() if k in accepted}


def start_warnings(args: argparse.Namespace) -> List[str]:
    """What a new run should be told loudly before it trains (and records in opts.yaml)."""
    if args.backbone_weights:
        return []
    what = "ConvNeXt (ImageNet)" if recipe_of(args.model) == "teacher" else "BNext (ImageNet)"
    return [f"{args.model} starts from RANDOM backbone weights (no --backbone_weights): results will be far from "
            f"the paper's; pass the {what} checkpoint with --backbone_weights (docs/reproduce.md)"]


def default_weight_decay(optimizer: str) -> float:
    """``--weight_decay``'s value when not given: each recipe's own."""
    return {"sgd": 5e-4, "adamwlion": 0.01}.get(optimizer, 0.0)


def run_options(args: argparse.Namespace, num_classes: int, given: Optional[set] = None) -> dict:
    """What opts.yaml records: every flag, plus what test.py needs to rebuild the network, the recipe
    whose defaults filled the flags left out, and (when known) the flags given explicitly."""
    opts = {"model": args.model, "model_options": model_options(args), "num_classes": num_classes,
            "dataset": args.dataset, "altitude": args.altitude, "h": args.h, "w": args.w, "views": args.views,
            "args": vars(args),
            "recipe": recipe_of(args.model)}
    if given is not None:
        opts["given_flags"] = sorted(given)
    return opts
