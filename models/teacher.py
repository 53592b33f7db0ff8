"""Full-precision ConvNeXt teachers with the MCCG head (``mccg_convnext_<variant>``).

The ConvNeXt comes from timm without its classifier. As in MCCG, the attention branches gate
the stage-4 map before the final norm, and the global branch is LayerNorm(GAP(map)), which is
exactly timm's pre-logits head output.
"""
from typing import Optional

import timm
import torch
import torch.nn as nn
from timm.models.convnext import checkpoint_filter_fn

from utils.errors import UserError, first_line
from utils.files import PathLike

from ._helpers import StateDict, load_weights_file
from ._registry import register_model
from .bicrossnet import BiCrossNet
from .mccg import MCCGHead


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


def _convnext_filter(state_dict: StateDict, model: nn.Module) -> StateDict:
    """timm's ``checkpoint_filter_fn`` maps the original (facebookresearch) layout to timm's and
    passes timm checkpoints through; the classifier-free teacher then drops ``head.fc``."""
    state_dict = checkpoint_filter_fn(state_dict, model)
    return {k: v for k, v in state_dict.items() if not k.startswith("head.fc.")}


def _create_mccg_convnext(variant: str, num_classes: int, block: int, head_input: str,
                          backbone_weights: Optional[PathLike], pretrained: bool) -> BiCrossNet:
    """ConvNeXt-``variant`` + MCCG head; weights from a file (``backbone_weights``: a timm or an
    original ConvNeXt checkpoint, EMA weights preferred) or from timm's hub (``pretrained``)."""
    model_name = f"convnext_{variant}"
    if pretrained and backbone_weights is not None:
        raise ValueError("pass either pretrained=True (timm hub weights) or backbone_weights (a file), not both")
    try:
        model = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
    except Exception as err:  # hub download: network, cache and file errors all end here
        raise UserError(
            f"could not fetch timm's pretrained {model_name} weights ({type(err).__name__}: {first_line(err)}); "
            f"download them where there is network access and pass the file as backbone_weights") from err
    if backbone_weights is not None:
        load_weights_file(model, backbone_weights, model_name, _convnext_filter)
    backbone = ConvNeXtBackbone(model)
    return BiCrossNet(backbone, MCCGHead(backbone.num_features, num_classes, block=block, head_input=head_input))


@register_model
def mccg_convnext_atto(num_classes: int, block: int = 2, head_input: str = "spatial",
                       backbone_weights: Optional[PathLike] = None, pretrained: bool = False) -> BiCrossNet:
    """MCCG teacher on ConvNeXt-Atto."""
    return _create_mccg_convnext("atto", num_classes, block, head_input, backbone_weights, pretrained)


@register_model
def mccg_convnext_femto(num_classes: int, block: int = 2, head_input: str = "spatial",
                        backbone_weights: Optional[PathLike] = None, pretrained: bool = False) -> BiCrossNet:
    """MCCG teacher on ConvNeXt-Femto."""
    return _create_mccg_convnext("femto", num_classes, block, head_input, backbone_weights, pretrained)


@register_model
def mccg_convnext_pico(num_classes: int, block: int = 2, head_input: str = "spatial",
                       backbone_weights: Optional[PathLike] = None, pretrained: bool = False) -> BiCrossNet:
    """MCCG teacher on ConvNeXt-Pico."""
    return _create_mccg_convnext("pico", num_classes, block, head_input, backbone_weights, pretrained)


@register_model
def mccg_convnext_nano(num_classes: int, block: int = 2, head_input: str = "spatial",
                       backbone_weights: Optional[PathLike] = None, pretrained: bool = False) -> BiCrossNet:
    """MCCG teacher on ConvNeXt-Nano."""
    return _create_mccg_convnext("nano", num_classes, block, head_input, backbone_weights, pretrained)


@register_model
def mccg_convnext_tiny(num_classes: int, block: int = 2, head_input: str = "spatial",
                       backbone_weights: Optional[PathLike] = None, pretrained: bool = False) -> BiCrossNet:
    """MCCG teacher on ConvNeXt-Tiny."""
    return _create_mccg_convnext("tiny", num_classes, block, head_input, backbone_weights, pretrained)


@register_model
def mccg_convnext_small(num_classes: int, block: int = 2, head_input: str = "spatial",
                        backbone_weights: Optional[PathLike] = None, pretrained: bool = False) -> BiCrossNet:
    """MCCG teacher on ConvNeXt-Small."""
    return _create_mccg_convnext("small", num_classes, block, head_input, backbone_weights, pretrained)


@register_model
def mccg_convnext_base(num_classes: int, block: int = 2, head_input: str = "spatial",
                       backbone_weights: Optional[PathLike] = None, pretrained: bool = False) -> BiCrossNet:
    """MCCG teacher on ConvNeXt-Base."""
    return _create_mccg_convnext("base", num_classes, block, head_input, backbone_weights, pretrained)
