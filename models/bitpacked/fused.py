"""The fused inference network (engine ``fused``): the bit-packed binary convs of :mod:`.network`
with each unit's full-precision tail in C++ instead of a dozen PyTorch ops over NCHW maps.

After its binary conv a unit runs two passes over memory (``csrc/fused.h``):

1. ``tail_means``: each (image, channel) plane's mean of ``x`` and of ``z``, giving the SE
   gate's input ``mean(s * pool(x) + (1 - s) * z)`` without the mixed map (an even map's 2x2
   average pool keeps its mean);
2. ``tail``: ``BN2(gate * z) + pool(x)`` (plain units) or ``BN2(gate * z * r) + r`` with
   ``r = pool(PReLU(x))`` (ELM units), the pooling included, written once, and packed into the
   next unit's sign bits while each pixel range is still in cache.

The SE's two 1x1 convs run as matrix products on the (images, channels) means, the stem's BN is
folded into its conv, and a batch runs ``micro_batch`` images at a time through the whole
backbone. The engine's C++ ops share work through a pool that never waits for a pre-empted
thread; the PyTorch ops left (the stem conv, the MCCG head) run on one thread
(:func:`one_torch_thread`), since each of their OpenMP regions waits for every thread at its end,
which on a machine shared with other processes cost more than their second thread gains. The arithmetic rounds differently from the float network's (sums in another order,
folded BNs, FMAs), so a few activation signs flip and features differ slightly: the exact engine
stays ``bitpacked``; docs/engine_speed.md measures how far apart the two are.
"""
import contextlib
from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..bicrossnet import BiCrossNet
from ..bnext import BinaryUnit, BNext, ELMAttentionUnit
from .network import InferenceBNext, PackedBinaryConv, bn_affine, prelu_slope

# Images per pass through the backbone: one image's maps (<= 4 MiB at 256x256) stay in cache.
FUSED_MICRO_BATCH = 1


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """PyTorch's own ops on one thread for the block (the engine's ops keep their pool)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def se_linear(conv: nn.Conv2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """A 1x1 conv's weight and bias as a matrix and a vector."""
    return conv.weight.detach().flatten(1).clone(), conv.bias.detach().clone()


class FusedUnit(nn.Module):
    """A plain or ELM-Attention unit: packed binary conv, then the fused tail."""

    def __init__(self, ops, unit: BinaryUnit):
        super().__init__()
        self.ops = ops
        self.conv = PackedBinaryConv(ops, unit.binary_conv, unit.norm1, unit.activation2)
        self.pooled = isinstance(unit.pool, nn.AvgPool2d)
        self.elm = isinstance(unit, ELMAttentionUnit)
        channels = unit.move.bias.numel()
        scale, shift = bn_affine(unit.norm2)
        w1, b1 = se_linear(unit.se.se[1])
        w2, b2 = se_linear(unit.se.se[3])
        with torch.no_grad():
            for name, value in (("move", unit.move.bias.flatten()), ("mix_x", unit.scale.flatten()),
                                ("mix_z", 1 - unit.scale.flatten()), ("slope", prelu_slope(unit.activation1, channels)),
                                ("scale", scale), ("shift", shift), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
                self.register_buffer(name, value.detach().float().contiguous().clone())
        self.register_buffer("none", torch.empty(0))

    def forward(self, x: torch.Tensor, bits: torch.Tensor, move_next: Optional[torch.Tensor] = None,
                out: Optional[torch.Tensor] = None, offset: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(output map, its signs packed with move_next)``; the output goes into channels
        ``[offset, offset + C)`` of ``out`` when given (then the bits are empty)."""
        z = self.conv(bits)
        means = self.ops.tail_means(x, z, self.mix_x, self.mix_z)
        gate = torch.addmm(self.b2, torch.addmm(self.b1, means, self.w1.t()).relu_(), self.w2.t()).sigmoid_()
        slope = self.slope if self.elm else self.none
        out = torch.empty_like(z) if out is None else out
        move = self.none if move_next is None else move_next
        return out, self.ops.tail(z, x, gate, self.scale, self.shift, slope, self.elm, self.pooled, out, offset, move)


class FusedBlock(nn.Module):
    """3x3 unit, then one 1x1 unit or two whose outputs fill the halves of one map."""

    def __init__(self, ops, block):
        super().__init__()
        self.ops = ops
        self.attention = FusedUnit(ops, block.Attention)
        ffn = (block.FFN_1, block.FFN_2) if block.widen else (block.FFN,)
        self.ffn = nn.ModuleList(FusedUnit(ops, unit) for unit in ffn)

    def forward(self, x: torch.Tensor, bits: torch.Tensor,
                move_next: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        y, y_bits = self.attention(x, bits, move_next=self.ffn[0].move)
        if len(self.ffn) == 1:
            return self.ffn[0](y, y_bits, move_next=move_next)
        c = y.shape[1]
        out = y.new_empty((y.shape[0], 2 * c, *y.shape[2:]))
        self.ffn[0](y, y_bits, out=out, offset=0)
        self.ffn[1](y, self.ops.pack(y, self.ffn[1].move), out=out, offset=c)
        return out, None if move_next is None else self.ops.pack(out, move_next)


class FusedBNext(InferenceBNext):
    """Inference-only BNext on packed bits with fused tails, with :class:`~models.bnext.BNext`'s forward methods."""

    engine = "fused"

    def __init__(self, ops, backbone: BNext, micro_batch: int = FUSED_MICRO_BATCH):
        super().__init__(backbone, micro_batch)
        self.ops = ops
        stem = backbone.feature[0]
        alpha, beta = bn_affine(stem.bn1)
        self.register_buffer("stem_weight", (stem.conv1.weight.detach() * alpha[:, None, None, None]).contiguous())
        self.register_buffer("stem_bias", beta.contiguous())
        self.stem_stride, self.stem_padding = stem.conv1.stride, stem.conv1.padding
        self.blocks = nn.ModuleList(FusedBlock(ops, block) for block in backbone.feature[1:])
        self.eval()

    def backbone_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's output for a micro-batch ``x``."""
        with one_torch_thread():
            x = F.conv2d(x, self.stem_weight, self.stem_bias, self.stem_stride, self.stem_padding)
        bits = self.ops.pack(x, self.blocks[0].attention.move)
        for i, block in enumerate(self.blocks):
            move_next = self.blocks[i + 1].attention.move if i + 1 < len(self.blocks) else None
            x, bits = block(x, bits, move_next)
        return x

    @torch.no_grad()
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final feature map (B, num_features, H/32, W/32), after the last PReLU."""
        maps = [self.backbone_map(chunk) for chunk in x.split(self.micro_batch)]
        return F.prelu(torch.cat(maps) if len(maps) > 1 else maps[0], self.slope)


class FusedBiCrossNet(BiCrossNet):
    """BiCrossNet on :class:`FusedBNext`, whose MCCG head runs on one PyTorch thread."""

    def forward(self, x: torch.Tensor):
        feature_map, global_feature = self.forward_backbone(x)
        with one_torch_thread():
            return self.head(feature_map, global_feature)
