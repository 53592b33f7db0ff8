"""Helpers shared by every model family (in the spirit of timm's ``_helpers.py``): the one loader
of weights files, strict state-dict loading with a readable mismatch report, and an input-size probe."""
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch

from utils.errors import UserError, first_line
from utils.files import PathLike, read_torch_file

StateDict = Dict[str, Any]
# ``filter_fn(state_dict, model) -> state_dict``: a family's mapping of its published layout.
FilterFn = Callable[[StateDict, torch.nn.Module], StateDict]

# Where weights files keep their state dict, in timm's order of preference (EMA weights first).
STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
# Key prefix that (Distributed)DataParallel adds to every key of the model it wraps.
WRAPPER_PREFIX = "module."


def nonfinite_entries(state_dict: Dict[str, Any]) -> List[str]:
    """Names of the floating-point tensors of ``state_dict`` that hold a NaN or an infinity."""
    return [name for name, value in state_dict.items()
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()]


def _holds_data(value: Any) -> bool:
    """A tensor with values (a meta tensor has a shape but no data to load)."""
    return torch.is_tensor(value) and not value.is_meta


def state_dict_mismatch(model: torch.nn.Module, state_dict: Mapping[str, Any]) -> str:
    """One line naming missing, unexpected and wrongly shaped keys ('' when ``state_dict`` fits)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape)):
        if items:
            shown = ", ".join(items[:3]) + (f" … (+{len(items) - 3} more)" if len(items) > 3 else "")
            parts.append(f"{len(items)} {label} ({shown})")
    return "; ".join(parts)


def load_model_state(model: torch.nn.Module, state_dict: Mapping[str, Any], source: PathLike, model_name: str,
                     what: str = "checkpoint") -> None:
    """Strictly load ``state_dict``; a mismatch says which model and file disagree, not a PyTorch dump."""
    mismatch = state_dict_mismatch(model, state_dict)
    not_data = [f"{k} ({type(v).__name__}{' on the meta device' if torch.is_tensor(v) else ''})"
                for k, v in state_dict.items() if not _holds_data(v)]
    if not_data:
        mismatch = "; ".join(filter(None, [mismatch, f"{len(not_data)} entries that are not tensors with data "
                                                     f"({', '.join(not_data[:3])})"]))
    if mismatch:
        raise UserError(f"{what} {source} does not match model {model_name!r}: {mismatch}")
    model.load_state_dict(state_dict, strict=True)


def _state_dict_in(obj: Any, path: PathLike, what: str) -> StateDict:
    """The tensors of a weights file: a bare state dict or one under a :data:`STATE_DICT_KEYS` entry,
    with a DataParallel ``module.`` prefix removed."""
    if isinstance(obj, Mapping):
        obj = next((obj[key] for key in STATE_DICT_KEYS if isinstance(obj.get(key), Mapping)), obj)
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"{what} {path} holds no state dict (expected a dict of tensors, bare or under one of "
                        f"{', '.join(repr(k) for k in STATE_DICT_KEYS)})")
    if all(k.startswith(WRAPPER_PREFIX) for k in obj):
        return {k[len(WRAPPER_PREFIX):]: v for k, v in obj.items()}
    return dict(obj)


def load_weights_file(model: torch.nn.Module, path: PathLike, model_name: str,
                      filter_fn: Optional[FilterFn] = None, what: str = "weights file") -> None:
    """Load a published weights file strictly into ``model``.

    The file is read weights-only (a pickle that would run code is refused), its state dict
    unwrapped, then mapped by the family's ``filter_fn``; any problem is one :class:`UserError`
    line naming the file.
    """
    state = _state_dict_in(read_torch_file(path, what), path, what)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except (KeyError, RuntimeError) as err:  # a filter looking up or reshaping keys the file lacks
            raise UserError(f"{what} {path} does not match model {model_name!r} ({type(err).__name__}: "
                            f"{first_line(err)})") from None
    load_model_state(model, state, path, model_name, what)


def check_input_size(model: torch.nn.Module, h: int, w: int, model_name: str) -> None:
    """Run ``model`` once on an ``h``×``w`` zero image, so an input size its strided layers cannot
    take is one clear ``ValueError`` before any work starts rather than a traceback from deep
    inside the network (the accepted sizes differ between backbones; multiples of 32 always work).
    Leaves the model's train/eval mode, buffers and the RNG untouched."""
    was_training = model.training
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, h, w, device=device))
    except RuntimeError as err:
        raise ValueError(f"{model_name} cannot take {h}x{w} inputs ({first_line(err)}); "
                         f"use multiples of 32 such as 256") from None
    finally:
        model.train(was_training)
