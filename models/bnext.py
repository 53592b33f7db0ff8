"""BNext binary backbone (Guo et al., "Join the High Accuracy Club on ImageNet with a Binary
Neural Network Ticket"), with module names that match the official ImageNet checkpoints.

Structure (``ch`` = channel list of the size, index 0 = stem):

* ``feature.0``: full-precision stem conv3x3 (stride 2) -> BN.
* ``feature.i`` (i >= 1): block from ``ch[i-1]`` to ``ch[i]``: a 3x3 unit ``Attention`` at the
  input width (stride 2 where the width changes, except block 1), then a 1x1 unit ``FFN``,
  or, where the width doubles, two parallel 1x1 units ``FFN_1``/``FFN_2`` concatenated.
  The 3x3 unit is an ELM-Attention unit for even i and a plain unit otherwise.
* head: ``prelu`` -> global average pool -> ``fc``.
"""
from typing import Dict, List

import torch
import torch.nn as nn

from ._registry import BACKBONE, register_model
from .binary import ApproxSign, HardBinaryConv, HardSign, LearnableBias, ReCUConv2d

BNEXT_CHANNELS: Dict[str, List[int]] = {
    "tiny": [32] + [64] + [128] * 2 + [256] * 2 + [512] * 6 + [1024] * 2,
    "small": [48] + [96] + [192] * 2 + [384] * 2 + [768] * 6 + [1536] * 2,
    "middle": [48] + [96] + [192] * 4 + [384] * 4 + [768] * 8 + [1536] * 4,
    "large": [64] + [128] + [256] * 4 + [512] * 4 + [1024] * 16 + [2048] * 4,
}
BINARIZERS = ("bnext", "recu")
# Keys of the ImageNet classifier in the official checkpoints.
CLASSIFIER_PREFIX = "fc."


class SqueezeExpand(nn.Module):
    """Channel gate: avgpool -> 1x1 conv C->C/8 -> ReLU -> 1x1 conv -> sigmoid."""

    def __init__(self, channels: int, ratio: int = 8):
        super().__init__()
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, channels // ratio, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // ratio, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(x)


class BinaryUnit(nn.Module):
    """Binary branch shared by all units, with information recoupling.

    ``z = PReLU(BN1(BinaryConv(sign(x + b))))``; the gate ``SE(s*pool(x) + (1-s)*z)`` lets
    the full-precision input decide which binary channels to trust. Subclasses add the residual.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, binarizer: str = "bnext",
                 temperature: float = 1.0):
        super().__init__()
        padding = kernel_size // 2
        self.scale = nn.Parameter(torch.full((1, channels, 1, 1), 0.5))
        self.move = LearnableBias(channels)
        if binarizer == "bnext":
            self.binary_activation = HardSign()
            self.binary_conv = HardBinaryConv(channels, channels, kernel_size, stride, padding, temperature)
        else:
            self.binary_activation = ApproxSign()
            self.binary_conv = ReCUConv2d(channels, channels, kernel_size, stride, padding)
        self.norm1 = nn.BatchNorm2d(channels)
        self.norm2 = nn.BatchNorm2d(channels)
        # activation1 is used only by ELM-Attention units; plain units carry it because the
        # official checkpoints have it in every unit.
        self.activation1 = nn.PReLU(channels)
        self.activation2 = nn.PReLU(channels)
        self.se = SqueezeExpand(channels)
        self.pool = nn.AvgPool2d(2) if stride == 2 else nn.Identity()

    def binary_branch(self, x: torch.Tensor) -> torch.Tensor:
        z = self.activation2(self.norm1(self.binary_conv(self.binary_activation(self.move(x)))))
        shortcut = self.pool(x)
        if shortcut.shape[-2:] != z.shape[-2:]:
            # An odd map at a stride-2 unit: the 2x2 pooled shortcut would broadcast against the
            # conv's rounded-up output instead of failing.
            raise RuntimeError(f"a stride-2 unit got a {x.shape[-2]}x{x.shape[-1]} map; it needs even sizes")
        # The scale is kept in [0, 1] by ``constrain_`` after every optimizer step, not clamped here:
        # checkpoints of the released code hold 3×3-unit scales just outside the range that its
        # forward uses as they are.
        mix = self.scale * shortcut + (1 - self.scale) * z
        return self.se(mix) * z

    @torch.no_grad()
    def constrain_(self) -> None:
        """Keep the mixing scale in [0, 1] between optimizer steps (see ``apply_constraints_``)."""
        self.scale.clamp_(0, 1)


class PlainUnit(BinaryUnit):
    """``out = BN2(z) + pool(x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.binary_branch(x)) + self.pool(x)


class ELMAttentionUnit(BinaryUnit):
    """Element-wise attention: the binary branch multiplies the real-valued residual.

    ``r = pool(PReLU(x)); out = BN2(z * r) + r``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.pool(self.activation1(x))
        return self.norm2(self.binary_branch(x) * r) + r


class BNextBlock(nn.Module):
    """3x3 unit at the input width, then one 1x1 unit, or two concatenated ones to double the width."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, elm: bool, **unit_kwargs):
        super().__init__()
        if out_chs not in (in_chs, 2 * in_chs):
            raise ValueError(f"a BNext block keeps or doubles the width, got {in_chs} -> {out_chs}")
        self.Attention = (ELMAttentionUnit if elm else PlainUnit)(in_chs, 3, stride, **unit_kwargs)
        self.widen = out_chs != in_chs
        if self.widen:
            self.FFN_1 = PlainUnit(in_chs, 1, **unit_kwargs)
            self.FFN_2 = PlainUnit(in_chs, 1, **unit_kwargs)
        else:
            self.FFN = PlainUnit(in_chs, 1, **unit_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Attention(x)
        if self.widen:
            return torch.cat((self.FFN_1(x), self.FFN_2(x)), dim=1)
        return self.FFN(x)


class Stem(nn.Module):
    """Full-precision conv3x3 (stride 2) -> BN.

    ``prelu`` is not applied (BNext's stem ends at the BN); it exists because the official
    checkpoints carry it.
    """

    def __init__(self, out_chs: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, out_chs, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.prelu = nn.PReLU(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv1(x))


class BNext(nn.Module):
    """BNext backbone with an optional ImageNet classifier.

    Args:
        size: 'tiny', 'small', 'middle' or 'large'.
        num_classes: classifier outputs; 0 builds no classifier (``forward`` returns pooled features).
        binarizer: 'bnext' (HardSign + HardBinaryConv) or 'recu' (ApproxSign + ReCUConv2d).
        temperature: initial temperature of every HardBinaryConv. 1 gives real-valued forward
            weights (the start of BNext's annealing); 0 makes the network binary from the start.
    """

    def __init__(self, size: str = "tiny", num_classes: int = 1000, binarizer: str = "bnext",
                 temperature: float = 1.0):
        super().__init__()
        if size not in BNEXT_CHANNELS:
            raise ValueError(f"size must be one of {', '.join(BNEXT_CHANNELS)}, got {size!r}")
        if binarizer not in BINARIZERS:
            raise ValueError(f"binarizer must be one of {', '.join(BINARIZERS)}, got {binarizer!r}")
        self.size = size
        ch = BNEXT_CHANNELS[size]
        blocks = [Stem(ch[0])]
        for i in range(1, len(ch)):
            stride = 2 if ch[i - 1] != ch[i] and i > 1 else 1
            elm = i % 2 == 0
            blocks.append(BNextBlock(ch[i - 1], ch[i], stride, elm, binarizer=binarizer, temperature=temperature))
        self.feature = nn.ModuleList(blocks)
        self.num_features = ch[-1]
        self.prelu = nn.PReLU(self.num_features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final feature map (B, num_features, H/32, W/32), after the last PReLU."""
        for block in self.feature:
            x = block(x)
        return self.prelu(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: BNext) -> Dict[str, torch.Tensor]:
    """Official BNext weights for ``model``: a classifier-free model drops the ImageNet ``fc``, so
    the ImageNet head never silently replaces a task head (a model with a classifier keeps it)."""
    if model.num_classes > 0:
        return state_dict
    return {k: v for k, v in state_dict.items() if not k.startswith(CLASSIFIER_PREFIX)}


# Bare ImageNet backbones, for the complexity counts against BNext's published figures.

@register_model(kind=BACKBONE)
def bnext_tiny(num_classes: int = 1000, binarizer: str = "bnext", temperature: float = 1.0) -> BNext:
    return BNext("tiny", num_classes, binarizer, temperature)


@register_model(kind=BACKBONE)
def bnext_small(num_classes: int = 1000, binarizer: str = "bnext", temperature: float = 1.0) -> BNext:
    return BNext("small", num_classes, binarizer, temperature)


@register_model(kind=BACKBONE)
def bnext_middle(num_classes: int = 1000, binarizer: str = "bnext", temperature: float = 1.0) -> BNext:
    return BNext("middle", num_classes, binarizer, temperature)


@register_model(kind=BACKBONE)
def bnext_large(num_classes: int = 1000, binarizer: str = "bnext", temperature: float = 1.0) -> BNext:
    return BNext("large", num_classes, binarizer, temperature)
