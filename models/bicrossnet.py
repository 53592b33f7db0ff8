"""Single-view network (backbone + MCCG head) and the binary BNext students of BiCrossNet.

A backbone supplies ``forward_features(x) -> (B, C, h, w)``, the map the attention branches
gate, and may supply ``forward_global(map) -> (B, C)``, the global-branch vector when it is
more than a plain average pool (ConvNeXt applies its final LayerNorm after pooling). Without
``forward_global`` the head pools the map itself.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn

from .bnext import BNext, load_bnext_checkpoint
from .mccg import MCCGHead
from .registry import register_variant

BNEXT_SIZES = ("tiny", "small", "middle", "large")


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


def bicrossnet_bnext(size: str, num_classes: int, block: int = 2, head_input: str = "spatial",
                     binarizer: str = "bnext", temperature: float = 0.0,
                     backbone_weights: Optional[str] = None) -> BiCrossNet:
    """BNext of ``size`` without its ImageNet classifier, plus the MCCG head.

    ``temperature`` 0 makes the forward weights exactly sign(w) from the first step: a student
    without an ImageNet checkpoint is then a BNN from the start. ``backbone_weights`` is an
    official BNext ImageNet checkpoint (its classifier is dropped; it carries its own T ~ 0).
    """
    backbone = BNext(size, num_classes=0, binarizer=binarizer, temperature=temperature)
    if backbone_weights is not None:
        load_bnext_checkpoint(backbone, backbone_weights)
    return BiCrossNet(backbone, MCCGHead(backbone.num_features, num_classes, block=block, head_input=head_input))


for _size in BNEXT_SIZES:
    register_variant(bicrossnet_bnext, _size, f"bicrossnet_bnext_{_size}")
