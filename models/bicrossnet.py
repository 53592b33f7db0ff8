"""Single-view network (backbone + MCCG head) and the binary BNext students of BiCrossNet.

A backbone supplies ``forward_features(x) -> (B, C, h, w)``, the map the attention branches
gate, and may supply ``forward_global(map) -> (B, C)``, the global-branch vector when it is
more than a plain average pool (ConvNeXt applies its final LayerNorm after pooling). Without
``forward_global`` the head pools the map itself.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn

from utils.files import PathLike

from ._helpers import load_weights_file
from ._registry import register_model
from .bnext import BNext, checkpoint_filter_fn
from .mccg import MCCGHead


class BiCrossNet(nn.Module):
    """One view's embedding network; the siamese pair applies the same instance to both views."""

    def __init__(self, backbone: nn.Module, head: MCCGHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward_backbone(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(feature_map, global_feature or None)`` as the head takes them."""
        feature_map = self.backbone.forward_features(x)
        forward_global = getattr(self.backbone, "forward_global", None)
        return feature_map, forward_global(feature_map) if forward_global is not None else None

    def forward_heads(self, x: torch.Tensor):
        """``(logits, features)`` tuples in any mode: distillation needs a frozen (eval) teacher's logits."""
        return self.head.forward_heads(*self.forward_backbone(x))

    def forward(self, x: torch.Tensor):
        """Train: ``(logits, features)`` tuples, one entry per branch; eval: (B, 512, branches)."""
        return self.head(*self.forward_backbone(x))


def _create_bicrossnet_bnext(size: str, num_classes: int, block: int, head_input: str, binarizer: str,
                             temperature: float, backbone_weights: Optional[PathLike]) -> BiCrossNet:
    """BNext of ``size`` without its ImageNet classifier, plus the MCCG head.

    ``temperature`` 0 makes the forward weights exactly sign(w) from the first step: a student
    without an ImageNet checkpoint is then a BNN from the start. ``backbone_weights`` is an
    official BNext ImageNet checkpoint (its classifier is dropped; it carries its own T ~ 0).
    """
    backbone = BNext(size, num_classes=0, binarizer=binarizer, temperature=temperature)
    if backbone_weights is not None:
        load_weights_file(backbone, backbone_weights, f"bnext_{size}", checkpoint_filter_fn)
    return BiCrossNet(backbone, MCCGHead(backbone.num_features, num_classes, block=block, head_input=head_input))


@register_model
def bicrossnet_bnext_tiny(num_classes: int, block: int = 2, head_input: str = "spatial", binarizer: str = "bnext",
                          temperature: float = 0.0, backbone_weights: Optional[PathLike] = None) -> BiCrossNet:
    """BiCrossNet student on BNext-T."""
    return _create_bicrossnet_bnext("tiny", num_classes, block, head_input, binarizer, temperature, backbone_weights)


@register_model
def bicrossnet_bnext_small(num_classes: int, block: int = 2, head_input: str = "spatial", binarizer: str = "bnext",
                           temperature: float = 0.0, backbone_weights: Optional[PathLike] = None) -> BiCrossNet:
    """BiCrossNet student on BNext-S."""
    return _create_bicrossnet_bnext("small", num_classes, block, head_input, binarizer, temperature, backbone_weights)


@register_model
def bicrossnet_bnext_middle(num_classes: int, block: int = 2, head_input: str = "spatial", binarizer: str = "bnext",
                            temperature: float = 0.0, backbone_weights: Optional[PathLike] = None) -> BiCrossNet:
    """BiCrossNet student on BNext-M."""
    return _create_bicrossnet_bnext("middle", num_classes, block, head_input, binarizer, temperature,
                                    backbone_weights)


@register_model
def bicrossnet_bnext_large(num_classes: int, block: int = 2, head_input: str = "spatial", binarizer: str = "bnext",
                           temperature: float = 0.0, backbone_weights: Optional[PathLike] = None) -> BiCrossNet:
    """BiCrossNet student on BNext-L."""
    return _create_bicrossnet_bnext("large", num_classes, block, head_input, binarizer, temperature, backbone_weights)
