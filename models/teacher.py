"""Full-precision ConvNeXt teachers with the MCCG head (``mccg_convnext_<variant>``).

The ConvNeXt comes from timm without its classifier. As in MCCG, the attention branches gate
the stage-4 map before the final norm, and the global branch is LayerNorm(GAP(map)), which is
exactly timm's pre-logits head output.
"""
import os
from typing import Optional

import timm
import torch
import torch.nn as nn
from timm.models import load_state_dict
from timm.models.convnext import checkpoint_filter_fn

from utils.errors import UserError

from .bicrossnet import BiCrossNet
from .registry import register_variant
from .mccg import MCCGHead

CONVNEXT_VARIANTS = ("atto", "femto", "pico", "nano", "tiny", "small", "base")


class ConvNeXtBackbone(nn.Module):
    """A classifier-free timm ConvNeXt split the way the MCCG head consumes it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_features = model.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def forward_global(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(feature_map, pre_logits=True)


def _first_line(err: Exception) -> str:
    """Error messages stay on one line (library messages often span several)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _mismatch_summary(model: nn.Module, state: dict) -> str:
    """One line naming missing, unexpected and wrongly shaped keys ('' when the state fits)."""
    expected = model.state_dict()
    problems = {
        "missing": [k for k in expected if k not in state],
        "unexpected": [k for k in state if k not in expected],
        "wrong shape": [k for k in state if k in expected and state[k].shape != expected[k].shape],
    }
    return "; ".join(f"{len(keys)} {kind} (e.g. {', '.join(keys[:3])})" for kind, keys in problems.items() if keys)


def load_convnext_weights(model: nn.Module, path: str) -> None:
    """Load a timm or an original ConvNeXt checkpoint (``{'model': ...}``, ``downsample_layers.*``
    keys) into a classifier-free timm ConvNeXt; the checkpoint's classifier is dropped.

    timm's own ``checkpoint_filter_fn`` maps the original layout to timm's; timm checkpoints
    pass through it unchanged. EMA weights are used when the file has them, as timm does.
    """
    if not os.path.isfile(path):
        raise UserError(f"--backbone_weights {path}: no such file")
    try:
        state = load_state_dict(path)
    except Exception as err:  # torch.load raises many types for files that are not checkpoints
        raise UserError(f"--backbone_weights {path}: not a readable PyTorch checkpoint ({_first_line(err)})") from err
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--backbone_weights {path} holds no state dict (expected a dict of tensors, bare or "
                        "under 'model' or 'state_dict')")
    name = model.pretrained_cfg.get("architecture", "ConvNeXt")
    try:
        state = checkpoint_filter_fn(state, model)
    except (KeyError, RuntimeError) as err:  # the filter looks up and reshapes original-layout keys
        raise UserError(f"--backbone_weights {path} does not fit {name} ({type(err).__name__}: "
                        f"{_first_line(err)})") from err
    state = {k: v for k, v in state.items() if not k.startswith("head.fc.")}
    mismatch = _mismatch_summary(model, state)
    if mismatch:
        raise UserError(f"--backbone_weights {path} does not fit {name}: {mismatch}")
    model.load_state_dict(state)


def mccg_convnext(variant: str, num_classes: int, block: int = 2, head_input: str = "spatial",
                  backbone_weights: Optional[str] = None, pretrained: bool = False) -> BiCrossNet:
    """ConvNeXt-``variant`` + MCCG head; weights from a file (``backbone_weights``) or timm's hub."""
    model_name = f"convnext_{variant}"
    if pretrained and backbone_weights is not None:
        raise UserError("pass either pretrained=True (timm hub weights) or --backbone_weights, not both")
    try:
        model = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
    except Exception as err:  # hub download: network, cache and file errors all end here
        raise UserError(
            f"could not fetch timm's pretrained {model_name} weights ({type(err).__name__}: {_first_line(err)}); download "
            f"them where there is network access and pass the file with --backbone_weights PATH") from err
    if backbone_weights is not None:
        load_convnext_weights(model, backbone_weights)
    backbone = ConvNeXtBackbone(model)
    return BiCrossNet(backbone, MCCGHead(backbone.num_features, num_classes, block=block, head_input=head_input))


for _variant in CONVNEXT_VARIANTS:
    register_variant(mccg_convnext, _variant, f"mccg_convnext_{_variant}")
