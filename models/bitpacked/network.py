"""The bit-packed inference network: a BNext backbone whose binary units run on packed bits.

Each unit (docs/method.md §2.1) becomes

* ``bits = pack(x, move)``: LearnableBias, sign and bit packing in one C++ pass; no float +-1 map;
* ``z = conv(bits)``: XNOR/popcount convolution whose output transform applies BN1 and PReLU;
* the SE gate reads ``mean(mix) = s * mean(pool(x)) + (1 - s) * mean(z)``, the mean being linear,
  so the mixed map is never built;
* ``out = BN2(gate * z) + pool(x)``, or ``BN2(gate * z * r) + r`` for ELM-Attention: a couple of
  channels-last PyTorch ops, BN2's scale folded into the gate.

The stem (its BN folded into the conv) and the MCCG head stay full-precision PyTorch modules.
Activations keep the channels-last layout the packing and the kernels read and write. A batch
runs ``micro_batch`` images at a time, so each unit's maps stay in cache instead of streaming
through memory.
"""
import copy
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..bicrossnet import BiCrossNet
from ..binary import BinaryConv2d, ReCUConv2d
from ..bnext import BinaryUnit, BNext, BNextBlock, ELMAttentionUnit, Stem
from .build import load_ops

# Images per pass through the backbone: 2 keeps a unit's maps (<= 2 x 4 MiB at 256x256) in the
# L2/L3 caches while amortising the per-op overhead over two images.
DEFAULT_MICRO_BATCH = 2


def bn_affine(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eval BatchNorm as ``x * alpha + beta``, computed the way PyTorch's CPU kernel does."""
    invstd = 1 / torch.sqrt(bn.running_var + bn.eps)
    alpha = invstd * bn.weight if bn.affine else invstd
    beta = (bn.bias if bn.affine else 0) - bn.running_mean * alpha
    return alpha.detach().clone(), beta.detach().clone()


def prelu_slope(prelu: nn.PReLU, channels: int) -> torch.Tensor:
    return prelu.weight.detach().expand(channels).clone()


class PackedBinaryConv(nn.Module):
    """A binary conv on packed bits with its BN1 (and ReCU's scale) and PReLU as output transform."""

    def __init__(self, ops, conv: BinaryConv2d, norm: nn.BatchNorm2d, activation: nn.PReLU):
        super().__init__()
        kernel, stride = conv.kernel_size[0], conv.stride[0]
        if conv.kernel_size != (kernel, kernel) or conv.stride != (stride, stride) or conv.padding != (kernel // 2,) * 2:
            raise ValueError(f"bitpacked conv needs a square kernel, one stride and padding kernel//2, got {conv}")
        with torch.no_grad():
            weight = conv.binary_weight().float()
        if not bool((weight.abs() == 1).all()):
            raise ValueError("bitpacked conv needs forward weights that are exactly +-1 (temperature 0)")
        self.ops = ops
        self.channels, self.kernel, self.stride = conv.in_channels, kernel, stride
        packed, pop = ops.pack_weight(weight.contiguous())
        scale, shift = bn_affine(norm)
        if isinstance(conv, ReCUConv2d):
            scale = scale * conv.alpha.detach().flatten()
        self.register_buffer("weight", packed)
        self.register_buffer("weight_pop", pop)
        self.register_buffer("scale", scale.float().contiguous())
        self.register_buffer("shift", shift.float().contiguous())
        self.register_buffer("slope", prelu_slope(activation, conv.out_channels).float().contiguous())

    def forward(self, bits: torch.Tensor) -> torch.Tensor:
        return self.ops.conv(bits, self.weight, self.weight_pop, self.scale, self.shift, self.slope,
                             self.channels, self.kernel, self.stride)


class PackedUnit(nn.Module):
    """A plain or ELM-Attention unit of BNext with its binary branch on packed bits."""

    def __init__(self, ops, unit: BinaryUnit):
        super().__init__()
        self.ops = ops
        self.conv = PackedBinaryConv(ops, unit.binary_conv, unit.norm1, unit.activation2)
        self.pooled = isinstance(unit.pool, nn.AvgPool2d)
        self.elm = isinstance(unit, ELMAttentionUnit)
        channels = unit.move.bias.numel()
        mix = unit.scale.detach().flatten()  # used as it is, as BinaryUnit.binary_branch does
        squeeze, expand = unit.se.se[1], unit.se.se[3]
        alpha, beta = bn_affine(unit.norm2)
        buffers = {
            "move": unit.move.bias.detach().flatten(),
            "mix_x": mix, "mix_z": 1 - mix,
            "squeeze_weight": squeeze.weight.detach().flatten(1), "squeeze_bias": squeeze.bias.detach(),
            "expand_weight": expand.weight.detach().flatten(1), "expand_bias": expand.bias.detach(),
            "bn_scale": alpha, "bn_shift": beta.view(1, channels, 1, 1),
            "slope": prelu_slope(unit.activation1, channels),
            "one": torch.ones(()),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float().clone().contiguous())

    def gate(self, mean_x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """SE(mix) times BN2's scale, as a (N, C, 1, 1) factor; ``mean_x`` is the mean of pool(x)."""
        mix = torch.addcmul(self.mix_x * mean_x, self.mix_z, z.mean((2, 3)))
        hidden = F.linear(mix, self.squeeze_weight, self.squeeze_bias).relu_()
        gate = F.linear(hidden, self.expand_weight, self.expand_bias).sigmoid_().mul_(self.bn_scale)
        return gate[:, :, None, None]

    def forward(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The unit's output, written into ``out`` when given (a channel slice of a wider map)."""
        z = self.conv(self.ops.pack(x, self.move))
        pooled_x = F.avg_pool2d(x, 2) if self.pooled else x
        gate = self.gate(pooled_x.mean((2, 3)), z)
        if self.elm:
            r = F.prelu(x, self.slope)
            r = F.avg_pool2d(r, 2) if self.pooled else r
            # BN2(g * z * r) + r = r * (1 + g' * z) + beta, with g' = g * BN2 scale.
            return torch.addcmul(self.bn_shift, r, torch.addcmul(self.one, z, gate), out=out)
        # BN2(g * z) + pool(x) = g' * z + pool(x) + beta.
        return torch.addcmul(pooled_x, z, gate, out=out).add_(self.bn_shift)


class PackedBlock(nn.Module):
    """3x3 unit, then one 1x1 unit or two concatenated ones (as :class:`~models.bnext.BNextBlock`)."""

    def __init__(self, ops, block: BNextBlock):
        super().__init__()
        self.attention = PackedUnit(ops, block.Attention)
        ffn = (block.FFN_1, block.FFN_2) if block.widen else (block.FFN,)
        self.ffn = nn.ModuleList(PackedUnit(ops, unit) for unit in ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(x)
        if len(self.ffn) == 1:
            return self.ffn[0](x)
        n, c, h, w = x.shape
        # The two halves are written in place: no concatenation pass.
        out = torch.empty((n, 2 * c, h, w), dtype=x.dtype, memory_format=torch.channels_last)
        for i, unit in enumerate(self.ffn):
            unit(x, out=out[:, i * c:(i + 1) * c])
        return out


class FoldedStem(nn.Module):
    """The full-precision stem conv with its BN folded into weight and bias."""

    def __init__(self, stem: Stem):
        super().__init__()
        alpha, beta = bn_affine(stem.bn1)
        weight = stem.conv1.weight.detach() * alpha[:, None, None, None]
        self.register_buffer("weight", weight.contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", beta)
        self.stride, self.padding = stem.conv1.stride, stem.conv1.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x.contiguous(memory_format=torch.channels_last), self.weight, self.bias,
                        self.stride, self.padding)


class PackedBNext(nn.Module):
    """Inference-only BNext on packed bits, with :class:`~models.bnext.BNext`'s forward methods."""

    def __init__(self, ops, backbone: BNext, micro_batch: int = DEFAULT_MICRO_BATCH):
        super().__init__()
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        self.micro_batch = micro_batch
        self.stem = FoldedStem(backbone.feature[0])
        self.blocks = nn.ModuleList(PackedBlock(ops, block) for block in backbone.feature[1:])
        self.register_buffer("slope", prelu_slope(backbone.prelu, backbone.num_features))
        self.num_features = backbone.num_features
        self.num_classes = backbone.num_classes
        self.fc = copy.deepcopy(backbone.fc)
        self.eval()

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("the bitpacked engine is inference-only; train the float network")
        return super().train(False)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return F.prelu(x, self.slope)

    @torch.no_grad()
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final feature map (B, num_features, H/32, W/32), after the last PReLU."""
        chunks = x.split(self.micro_batch)
        if len(chunks) == 1:
            return self._features(x)
        return torch.cat([self._features(chunk) for chunk in chunks])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def convert(model: nn.Module, micro_batch: int = DEFAULT_MICRO_BATCH) -> nn.Module:
    """Inference copy of a BNext student (a BiCrossNet on BNext, or a bare BNext) on packed bits.

    The original model is left as it is. Where the engine cannot be built this warns once and
    returns ``model`` itself, in eval mode: the float path. Any other network is a ValueError.
    """
    backbone = model.backbone if isinstance(model, BiCrossNet) else model
    if not isinstance(backbone, BNext):
        raise ValueError(f"the bitpacked engine runs BNext students; {type(backbone).__name__} is not one")
    ops = load_ops()
    if ops is None:
        return model.eval()
    packed = PackedBNext(ops, backbone, micro_batch)
    if backbone is model:
        return packed
    return BiCrossNet(packed, copy.deepcopy(model.head)).eval()
