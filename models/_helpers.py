"""Helpers shared by every model family: strict state-dict loading with a readable mismatch
report, and an input-size probe (in the spirit of timm's ``_helpers.py``)."""
from typing import Any, Dict, List, Union
import os

import torch

from utils.errors import UserError

PathLike = Union[str, os.PathLike]


def nonfinite_entries(state_dict: Dict[str, Any]) -> List[str]:
    """Names of the floating-point tensors of ``state_dict`` that hold a NaN or an infinity."""
    return [name for name, value in state_dict.items()
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()]


def load_model_state(model: torch.nn.Module, state_dict: dict, source: PathLike, model_name: str) -> None:
    """Strictly load ``state_dict``; a mismatch says which model and file disagree, not a PyTorch dump."""
    result = state_dict_mismatch(model, state_dict)
    if result:
        raise UserError(f"checkpoint {source} does not match model {model_name!r}: {result}")
    model.load_state_dict(state_dict, strict=True)


def state_dict_mismatch(model: torch.nn.Module, state_dict: dict) -> str:
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
