"""The bit-packed inference network: a BNext backbone whose binary units run on packed bits.

Each unit (docs/method.md §2.1) becomes

* ``bits = pack(x, move)``: LearnableBias, sign and bit packing in one C++ pass over the NCHW map
  (a bit transpose into pixel-major words); no float +-1 map;
* ``z = conv(bits)``: XNOR/popcount convolution whose output transform applies BN1 (and ReCU's
  scale) and PReLU, written as an NCHW map;
* the mixing, the SE gate, BN2 and the residual: the float unit's own PyTorch ops.

The result is bit for bit the float network's, not merely close: a binary network turns any
rounding difference before a sign into a flipped bit, and one flip spreads through the following
units. So the conv's output transform rounds as PyTorch's eval BatchNorm does (an FMA with an
FMA-computed shift, :func:`bn_affine`), and every full-precision op is the float network's, in its
order and on maps in its (NCHW) layout: reductions such as the SE's average pool sum in a
layout-dependent order. The stem and the MCCG head are the float network's modules.

A batch runs ``micro_batch`` images at a time through each unit, so its maps stay in cache
instead of streaming through memory; only the SE's convs, whose oneDNN kernels round differently
for other batch sizes, see the whole batch at once.
"""
import copy
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..binary import BinaryConv2d, ReCUConv2d
from ..bnext import BinaryUnit, BNext, BNextBlock, ELMAttentionUnit

# Images per pass through the backbone: 2 keeps a unit's maps (<= 2 x 4 MiB at 256x256) in the
# L2/L3 caches while amortising the per-op overhead over two images.
DEFAULT_MICRO_BATCH = 2


def bn_affine(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eval BatchNorm as ``fma(x, alpha, beta)``, with ``alpha`` and ``beta`` rounded as PyTorch's
    CPU kernel rounds them: ``alpha = (1 / sqrt(var + eps)) * weight`` in float32 scalar arithmetic
    (NumPy's, correctly rounded; ``torch.sqrt`` is not always), ``beta = fma(-mean, alpha, bias)``
    (the float64 product of two float32 values is exact, so one rounding remains)."""
    var, mean = (t.detach().cpu().numpy().astype(np.float32) for t in (bn.running_var, bn.running_mean))
    weight = bn.weight.detach().cpu().numpy() if bn.affine else np.ones_like(var)
    bias = bn.bias.detach().cpu().numpy() if bn.affine else np.zeros_like(var)
    alpha = (np.float32(1) / np.sqrt(var + np.float32(bn.eps))) * weight.astype(np.float32)
    beta = (bias.astype(np.float64) - mean.astype(np.float64) * alpha.astype(np.float64)).astype(np.float32)
    return torch.from_numpy(alpha), torch.from_numpy(beta)


def avg_pool2(x: torch.Tensor) -> torch.Tensor:
    """``nn.AvgPool2d(2)`` bit for bit, ``((a + b) + c) + d`` then ``/ 4`` per window, from strided
    views of an even-sized NCHW map: PyTorch's NCHW pooling kernel is several times slower."""
    n, c, h, w = x.shape
    if h % 2 or w % 2:
        return F.avg_pool2d(x, 2)
    v = x.reshape(n, c, h // 2, 2, w // 2, 2)
    return (v[:, :, :, 0, :, 0] + v[:, :, :, 0, :, 1]).add_(v[:, :, :, 1, :, 0]).add_(v[:, :, :, 1, :, 1]).div_(4)


def prelu_slope(prelu: nn.PReLU, channels: int) -> torch.Tensor:
    return prelu.weight.detach().expand(channels).clone()


class PackedBinaryConv(nn.Module):
    """A binary conv on packed bits with its BN1 (and ReCU's scale) and PReLU as output transform."""

    def __init__(self, ops, conv: BinaryConv2d, norm: nn.BatchNorm2d, activation: nn.PReLU):
        super().__init__()
        kernel, stride = conv.kernel_size[0], conv.stride[0]
        if (conv.kernel_size, conv.stride, conv.padding) != ((kernel,) * 2, (stride,) * 2, (kernel // 2,) * 2):
            raise ValueError(f"bitpacked conv needs a square kernel, one stride and padding kernel//2, got {conv}")
        with torch.no_grad():
            weight = conv.binary_weight().float()
        if not bool((weight.abs() == 1).all()):
            raise ValueError("bitpacked conv needs forward weights that are exactly +-1 (temperature 0)")
        self.ops = ops
        self.channels, self.kernel, self.stride = conv.in_channels, kernel, stride
        packed, pop = ops.pack_weight(weight.contiguous())
        scale, shift = bn_affine(norm)
        prescale = conv.alpha.detach().flatten() if isinstance(conv, ReCUConv2d) else torch.ones_like(scale)
        self.register_buffer("weight", packed)
        self.register_buffer("weight_pop", pop)
        for name, value in (("prescale", prescale), ("scale", scale), ("shift", shift),
                            ("slope", prelu_slope(activation, conv.out_channels))):
            self.register_buffer(name, value.float().contiguous())

    def forward(self, bits: torch.Tensor) -> torch.Tensor:
        return self.ops.conv(bits, self.weight, self.weight_pop, self.prescale, self.scale, self.shift, self.slope,
                             self.channels, self.kernel, self.stride)


class PackedUnit(nn.Module):
    """A plain or ELM-Attention unit of BNext with its binary branch on packed bits."""

    def __init__(self, ops, unit: BinaryUnit):
        super().__init__()
        self.ops = ops
        self.conv = PackedBinaryConv(ops, unit.binary_conv, unit.norm1, unit.activation2)
        self.pooled = isinstance(unit.pool, nn.AvgPool2d)
        self.elm = isinstance(unit, ELMAttentionUnit)
        with torch.no_grad():
            self.register_buffer("move", unit.move.bias.detach().flatten().clone())
            self.register_buffer("mix_x", unit.scale.detach().clone())
            self.register_buffer("mix_z", 1 - unit.scale.detach())
            self.register_buffer("slope", prelu_slope(unit.activation1, self.move.numel()))
        se = copy.deepcopy(unit.se.se)
        self.se_pool, self.se_gate = se[0], se[1:]  # average pool; convs, ReLU and sigmoid
        self.norm2 = copy.deepcopy(unit.norm2)

    def forward(self, chunks: List[torch.Tensor], outs: Optional[List[torch.Tensor]] = None) -> List[torch.Tensor]:
        """The unit's output for each chunk of the batch, written into ``outs`` when given (channel
        slices of wider maps). The ops after the conv are :class:`~models.bnext.BinaryUnit`'s, in its
        order; the SE's convs run once on the whole batch, whose size their oneDNN kernels depend on."""
        zs, pooled, means = [], [], []
        for x in chunks:
            z = self.conv(self.ops.pack(x, self.move))
            pooled_x = avg_pool2(x) if self.pooled else x
            means.append(self.se_pool(self.mix_x * pooled_x + self.mix_z * z))
            zs.append(z)
            pooled.append(pooled_x)
        gates = self.se_gate(torch.cat(means)).split([len(x) for x in chunks])
        results = []
        for x, z, pooled_x, gate, out in zip(chunks, zs, pooled, gates, outs or [None] * len(chunks)):
            branch = gate * z
            if self.elm:
                r = F.prelu(x, self.slope)
                r = avg_pool2(r) if self.pooled else r
                results.append(torch.add(self.norm2(branch * r), r, out=out))
            else:
                results.append(torch.add(self.norm2(branch), pooled_x, out=out))
        return results


class PackedBlock(nn.Module):
    """3x3 unit, then one 1x1 unit or two concatenated ones (as :class:`~models.bnext.BNextBlock`)."""

    def __init__(self, ops, block: BNextBlock):
        super().__init__()
        self.attention = PackedUnit(ops, block.Attention)
        ffn = (block.FFN_1, block.FFN_2) if block.widen else (block.FFN,)
        self.ffn = nn.ModuleList(PackedUnit(ops, unit) for unit in ffn)

    def forward(self, chunks: List[torch.Tensor]) -> List[torch.Tensor]:
        chunks = self.attention(chunks)
        if len(self.ffn) == 1:
            return self.ffn[0](chunks)
        # The two halves are written in place: no concatenation pass.
        outs = [x.new_empty((x.shape[0], 2 * x.shape[1], *x.shape[2:])) for x in chunks]
        c = chunks[0].shape[1]
        for i, unit in enumerate(self.ffn):
            unit(chunks, outs=[out[:, i * c:(i + 1) * c] for out in outs])
        return outs


class InferenceBNext(nn.Module):
    """What both engines' backbones keep of a :class:`~models.bnext.BNext`: the last PReLU, the
    pooling and classifier with BNext's forward methods around ``forward_features``, and no training."""

    engine = "bitpacked"

    def __init__(self, backbone: BNext, micro_batch: int):
        super().__init__()
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        self.micro_batch = micro_batch
        self.register_buffer("slope", prelu_slope(backbone.prelu, backbone.num_features))
        self.num_features = backbone.num_features
        self.num_classes = backbone.num_classes
        self.pool = copy.deepcopy(backbone.pool)
        self.fc = copy.deepcopy(backbone.fc)

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(f"the {self.engine} engine is inference-only; train the float network")
        return super().train(False)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class PackedBNext(InferenceBNext):
    """Inference-only BNext on packed bits, with :class:`~models.bnext.BNext`'s forward methods."""

    def __init__(self, ops, backbone: BNext, micro_batch: int = DEFAULT_MICRO_BATCH):
        super().__init__(backbone, micro_batch)
        self.stem = copy.deepcopy(backbone.feature[0])
        self.blocks = nn.ModuleList(PackedBlock(ops, block) for block in backbone.feature[1:])
        self.eval()

    @torch.no_grad()
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final feature map (B, num_features, H/32, W/32), after the last PReLU.

        The stem conv and the SE convs see the whole batch, as in the float network (their oneDNN
        kernels round differently for other batch sizes); everything else, the stem's BN included,
        runs ``micro_batch`` images at a time.
        """
        chunks = [self.stem.bn1(chunk) for chunk in self.stem.conv1(x).split(self.micro_batch)]
        for block in self.blocks:
            chunks = block(chunks)
        return F.prelu(torch.cat(chunks) if len(chunks) > 1 else chunks[0], self.slope)

