"""MCCG head: a global branch plus triplet-attention branches, each with its own classifier.

MCCG ("Multiple Classifiers for Cross-view Geo-localization") trains one classifier per branch
and retrieves with the concatenation of their 512-d bottleneck features. The attention
branches are triplet attention without its H-W branch: the C-W and H-C gates look at the
feature map from two rotated viewpoints, so each branch vector weighs channels differently.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
# timm has no ZPool / triplet attention, but CBAM's spatial attention is the same gate:
# channel max and mean -> 7x7 conv (2->1, no bias) -> BatchNorm -> sigmoid -> multiply.
# (It stacks mean before max; MCCG stacks max before mean, which only permutes the conv's
# two input channels.) Triplet attention applies it to permuted views of the map.
from timm.layers.cbam import SpatialAttn

# Choices of ``block`` (attention branches besides the global one) and ``head_input``.
BLOCKS = (0, 1, 2)
HEAD_INPUTS = ("spatial", "pooled")

# Each permutation swaps the channel axis with one spatial axis and is its own inverse:
# (B,C,H,W) -> (B,H,C,W) gates the C-W plane, (B,C,H,W) -> (B,W,H,C) gates the H-C plane.
CW_PERMUTATION = (0, 2, 1, 3)
HC_PERMUTATION = (0, 3, 2, 1)


# Initial BatchNorm scale of a ClassBlock: MCCG's (and the released code's) constant 1, or the
# University-1652 baseline's N(1, 0.02).
CLASSBLOCK_BN_INITS = ("constant", "normal")


def init_classblock_bn(model: nn.Module, mode: str) -> None:
    """Set the BatchNorm scale of every ClassBlock of ``model`` to its ``mode`` initial value."""
    if mode not in CLASSBLOCK_BN_INITS:
        raise ValueError(f"mode must be one of {', '.join(CLASSBLOCK_BN_INITS)}, got {mode!r}")
    for block in model.modules():
        if isinstance(block, ClassBlock):
            if mode == "constant":
                nn.init.ones_(block.bn.weight)
            else:
                nn.init.normal_(block.bn.weight, 1.0, 0.02)


class ClassBlock(nn.Module):
    """Linear -> BatchNorm1d -> Dropout bottleneck, then a linear classifier (MCCG's ClassBlock).

    The bottleneck feature is the retrieval descriptor; the classifier only supplies the
    cross-entropy signal during training, so eval mode returns the feature alone.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.5):
        super().__init__()
        self.fc = nn.Linear(in_features, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)
        # MCCG's weights_init_kaiming / weights_init_classifier.
        nn.init.kaiming_normal_(self.fc.weight, a=0, mode="fan_out")
        nn.init.zeros_(self.fc.bias)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """512-d feature as fed to the classifier (dropout applies in train mode only)."""
        return self.drop(self.bn(self.fc(x)))

    def forward_heads(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(logits, feature)`` in any mode; ``logits = classifier(feature)``."""
        feature = self.forward_features(x)
        return self.classifier(feature), feature

    def forward(self, x: torch.Tensor):
        if self.training:
            return self.forward_heads(x)
        return self.forward_features(x)


class PermutedGate(nn.Module):
    """Attention gate applied to a permuted view of the map, then permuted back.

    The gate pools over dim 1 of the permuted tensor, i.e. over the axis the permutation moved
    into the channel slot, and weights the plane spanned by the other two axes.
    """

    def __init__(self, permutation: Sequence[int], kernel_size: int = 7):
        super().__init__()
        self.permutation = tuple(permutation)
        self.gate = SpatialAttn(kernel_size)
        self.gate.conv.bn.momentum = 0.01  # as MCCG's BasicConv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x.permute(self.permutation)).permute(self.permutation)


class MCCGHead(nn.Module):
    """Global branch plus ``block`` attention branches, one :class:`ClassBlock` each.

    ``head_input='spatial'`` gates the backbone's C x H x W map. ``head_input='pooled'``
    reproduces the released BiCrossNet code, which average-pools the map to C x 1 x 1 before the
    head: on a 1 x 1 map both gates reduce to a 1-D convolution across channels (the centre
    column of the 7x7 kernel for C-W, the centre row for H-C, the two pooled channels being
    equal), followed by BatchNorm and a sigmoid, i.e. a channel gate.

    Branch order is global first, then C-W, then H-C.
    """

    def __init__(
            self,
            in_channels: int,
            num_classes: int,
            block: int = 2,
            head_input: str = "spatial",
            hidden: int = 512,
            dropout: float = 0.5,
    ):
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be 0, 1 or 2 (attention branches), got {block!r}")
        if head_input not in HEAD_INPUTS:
            raise ValueError(f"head_input must be one of {', '.join(HEAD_INPUTS)}, got {head_input!r}")
        self.block = block
        self.head_input = head_input
        self.gates = nn.ModuleList(PermutedGate(p) for p in (CW_PERMUTATION, HC_PERMUTATION)[:block])
        self.classifiers = nn.ModuleList(
            ClassBlock(in_channels, num_classes, hidden, dropout) for _ in range(block + 1))

    def branch_vectors(self, feature_map: torch.Tensor, global_feature: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """The (B, C) input of every classifier: global vector, then one per gate."""
        if global_feature is None:
            global_feature = feature_map.mean((2, 3))
        if self.head_input == "pooled":
            feature_map = feature_map.mean((2, 3), keepdim=True)
        return [global_feature] + [gate(feature_map).mean((2, 3)) for gate in self.gates]

    def forward_heads(
            self, feature_map: torch.Tensor, global_feature: Optional[torch.Tensor] = None,
    ) -> Tuple[Tuple[torch.Tensor, ...], Tuple[torch.Tensor, ...]]:
        """``(logits, features)`` tuples with one entry per branch, in any mode."""
        vectors = self.branch_vectors(feature_map, global_feature)
        logits, features = zip(*(cls.forward_heads(v) for cls, v in zip(self.classifiers, vectors)))
        return logits, features

    def forward(self, feature_map: torch.Tensor, global_feature: Optional[torch.Tensor] = None):
        """Train: ``(logits, features)`` tuples; eval: (B, hidden, block + 1) stacked features."""
        if self.training:
            return self.forward_heads(feature_map, global_feature)
        vectors = self.branch_vectors(feature_map, global_feature)
        return torch.stack([cls(v) for cls, v in zip(self.classifiers, vectors)], dim=2)
