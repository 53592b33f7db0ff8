"""What the network description of ``opts.yaml`` (and of a packed file's meta) may hold.

Both files can be edited or planted by anyone with write access to a run folder, and their values
size the network that is built (classes, input size) and choose the test protocol (dataset,
altitude). Values of the wrong type or outside what a run can hold are refused with one line
naming the file and the entry, before anything is built or written.
"""
from pathlib import Path
from typing import Mapping

from datasets import DATASETS, SUES_ALTITUDES
from utils.errors import UserError

# Far above both benchmarks (University-1652: 701 training classes, SUES-200: 120), far below a
# classifier that would not fit in memory.
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
