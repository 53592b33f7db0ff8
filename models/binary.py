"""Binary building blocks: sign activations with surrogate gradients and binary convolutions.

Two weight binarizers are provided:

* :class:`HardBinaryConv` (BNext): no scaling factor, forward weight ``clamp(w / T, -1, 1)``
  with a temperature buffer ``T`` that the BNext recipe anneals towards 0 (pure sign).
* :class:`ReCUConv2d` (ReCU, "Reviving the dead weights"): standardized weights clamped at
  the quantile ``Q_tau`` before the sign, with a learnable per-output-channel scale.

Every binary convolution subclasses :class:`BinaryConv2d`; optimizer partitioning and
complexity counting find binary latent weights as ``m.weight`` of ``isinstance(m, BinaryConv2d)``.

``sign(0)`` is taken as ``+1`` throughout, so activations and binary weights are exactly in
{-1, +1} (``torch.sign`` would give 0, a third value a 1-bit kernel cannot represent).

The surrogate gradients go through a custom :class:`torch.autograd.Function` because their
backward differs from the derivative of any differentiable forward (no library op fits).
"""
import math
from typing import Iterator, Tuple

import torch
import torch.nn as nn

# Latent weights of HardBinaryConv and the pass-through range of HardSign (BNext uses 1.5).
HARD_RANGE = 1.5
# Below this temperature HardBinaryConv uses the exact sign of its latent weights.
MIN_TEMPERATURE = 1e-7


def binarize(x: torch.Tensor) -> torch.Tensor:
    """Sign with ``sign(0) = +1``: values exactly in {-1, +1}, same dtype as ``x``."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class _SignSTE(torch.autograd.Function):
    """sign(x) forward; backward scales the incoming gradient by ``surrogate_grad(x)``."""

    @staticmethod
    def forward(ctx, x, surrogate_grad):
        ctx.save_for_backward(x)
        ctx.surrogate_grad = surrogate_grad
        return binarize(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ctx.surrogate_grad(x).to(grad.dtype), None


class _StraightThroughWeight(torch.autograd.Function):
    """Forward: the given forward weight; backward: the gradient goes unchanged to the latent weight.

    Same values and gradients as ``latent + (forward_weight - latent).detach()``, without two extra
    passes over the weights and their autograd nodes on every call (about 9 % of a BiCrossNet-T
    training step on CPU)."""

    @staticmethod
    def forward(ctx, latent, forward_weight):
        return forward_weight

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class BinaryActivation(nn.Module):
    """Binarizes activations to {-1, +1}; subclasses choose the surrogate gradient.

    The ``temperature`` buffer (shape [1]) exists because the official BNext checkpoints carry
    one per activation (``binary_activation.temperature``). BNext divides by it before the
    sign, which a positive temperature cannot change, so it has no effect on the forward
    pass; it is kept only so checkpoints load strictly.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("temperature", torch.ones(1))

    @staticmethod
    def surrogate_grad(x: torch.Tensor) -> torch.Tensor:
        """d sign(x) / dx as seen by the backward pass."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SignSTE.apply(x, self.surrogate_grad)


class HardSign(BinaryActivation):
    """BNext activation: sign forward, straight-through gradient of clamp(x, -1.5, 1.5)."""

    @staticmethod
    def surrogate_grad(x):
        return x.abs() <= HARD_RANGE


class ApproxSign(BinaryActivation):
    """ReCU activation: sign forward, piecewise-polynomial gradient ``max(0, 2 - 2|x|)`` (Bi-Real)."""

    @staticmethod
    def surrogate_grad(x):
        return (2 - 2 * x.abs()).clamp(min=0)


class BinaryConv2d(nn.Conv2d):
    """Base of every binary convolution: convolves with :meth:`binary_weight` of ``weight``.

    ``weight`` is the real-valued latent weight that the optimizer updates; the forward pass
    sees only its binarized view, so counting tools treat this layer's MACs as BOPs.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__(in_chs, out_chs, kernel_size, stride=stride, padding=padding, bias=False)

    def binary_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.binary_weight(), self.bias)


class HardBinaryConv(BinaryConv2d):
    """BNext weight binarizer: ``clamp(w / T, -1, 1)``, exactly ``sign(w)`` once ``T < 1e-7``.

    No scaling factor: the BatchNorm that follows absorbs the magnitude. The gradient w.r.t.
    the latent weight is the gradient w.r.t. the forward weight (identity straight-through),
    and latent weights are kept in [-1.5, 1.5] so they stay close enough to zero to keep
    flipping sign: :meth:`constrain_` projects them after every optimizer step (see
    :func:`apply_constraints_`). Projecting after the step rather than clamping in ``forward``
    lets one network run on both views before a single backward.
    """

    def __init__(self, in_chs, out_chs, kernel_size, stride=1, padding=0, temperature: float = 1.0):
        super().__init__(in_chs, out_chs, kernel_size, stride=stride, padding=padding)
        self.register_buffer("temperature", torch.full((1,), float(temperature)))

    @torch.no_grad()
    def constrain_(self) -> None:
        self.weight.clamp_(-HARD_RANGE, HARD_RANGE)

    def binary_weight(self) -> torch.Tensor:
        w = self.weight
        t = self.temperature
        with torch.no_grad():
            # torch.where instead of a Python branch keeps the forward free of data-dependent
            # control flow (meta-device counting, tracing for export).
            forward_w = torch.where(t < MIN_TEMPERATURE, binarize(w), (w / t.clamp(min=1e-8)).clamp(-1, 1))
        return _StraightThroughWeight.apply(w, forward_w)


class ReCUConv2d(BinaryConv2d):
    """ReCU weight binarizer with a learnable per-output-channel scale ``alpha``.

    As in the ReCU reference implementation, each output channel's weights are standardized
    (``w1 = 2*sqrt(2) * (w - mean) / std``, statistics over in-channels and kernel), while the
    quantile ``Q_tau = -mean|w1| * ln(2 - 2*tau)`` is one value per layer. Weights beyond
    ``Q_tau`` are clamped (their gradient is zero), the rest pass the sign straight through.
    ``tau`` rises from 0.85 to 0.99 over training (:class:`BinarizerSchedule`).
    """

    def __init__(self, in_chs, out_chs, kernel_size, stride=1, padding=0, tau: float = 0.85):
        super().__init__(in_chs, out_chs, kernel_size, stride=stride, padding=padding)
        self.alpha = nn.Parameter(torch.rand(out_chs, 1, 1))
        self.register_buffer("tau", torch.full((1,), float(tau)))

    def standardized_weight(self) -> torch.Tensor:
        w0 = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return 2 * math.sqrt(2) * w0 / torch.sqrt(w0.var(dim=(1, 2, 3), keepdim=True) + 1e-5)

    def quantile(self, w1: torch.Tensor) -> torch.Tensor:
        """``Q_tau`` for standardized weights ``w1`` (a constant for the gradient)."""
        return (-w1.abs().mean() * torch.log(2 - 2 * self.tau)).detach()

    def binary_weight(self) -> torch.Tensor:
        w1 = self.standardized_weight()
        q = self.quantile(w1)
        w2 = torch.clamp(w1, -q, q)
        return w2 + (binarize(w2) - w2).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.alpha


class LearnableBias(nn.Module):
    """Per-channel shift ("move") applied before the sign, so each channel learns its threshold."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


def binary_convs(model: nn.Module) -> Iterator[BinaryConv2d]:
    """Every binary convolution of ``model``."""
    return (m for m in model.modules() if isinstance(m, BinaryConv2d))


def apply_constraints_(model: nn.Module) -> None:
    """Project constrained parameters (latent binary weights, BNext mixing scales) back into
    their ranges; call once before training and after every optimizer step."""
    for module in model.modules():
        if hasattr(module, "constrain_"):
            module.constrain_()


class BinarizerSchedule:
    """The per-epoch schedules of the binarizers, owned in one place so a trainer only calls
    :meth:`start_epoch` and :meth:`end_epoch`.

    * ReCU: ``tau(e) = A*exp(e/E) + B`` rises from 0.85 at epoch 0 to 0.99 at epoch ``E = epochs``
      (``A = 0.14 / (exp(1) - 1)``, ``B = 0.85 - A``), set on every :class:`ReCUConv2d` as an epoch starts.
    * BNext: every :class:`HardBinaryConv` temperature is multiplied by ``temperature_decay`` as an
      epoch ends (the BNext recipe uses 0.9; 1 keeps it fixed). The temperature lives in the model's
      buffers, so a resumed run continues from the checkpoint's value.
    """

    def __init__(self, model: nn.Module, epochs: int, temperature_decay: float = 1.0):
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if temperature_decay < 0:
            raise ValueError(f"temperature_decay must be >= 0, got {temperature_decay}")
        self.epochs = epochs
        self.temperature_decay = temperature_decay
        self._recu = [m for m in binary_convs(model) if isinstance(m, ReCUConv2d)]
        self._hard = [m for m in binary_convs(model) if isinstance(m, HardBinaryConv)]

    def tau(self, epoch: float) -> float:
        """ReCU's ``tau`` at (0-based) ``epoch``."""
        a = (0.99 - 0.85) / (math.e - 1)
        b = 0.85 - a
        return a * math.exp(epoch / self.epochs) + b

    def start_epoch(self, epoch: int) -> None:
        """Set the ReCU ``tau`` of 0-based ``epoch`` (nothing to do without ReCU convolutions)."""
        if not 0 <= epoch < self.epochs:
            raise ValueError(f"epoch must be in [0, {self.epochs}), got {epoch}")
        tau = self.tau(epoch)
        for m in self._recu:
            m.tau.fill_(tau)

    def end_epoch(self) -> None:
        """Decay the BNext temperatures once (nothing to do when ``temperature_decay`` is 1)."""
        if self.temperature_decay != 1.0:
            for m in self._hard:
                m.temperature.mul_(self.temperature_decay)


@torch.no_grad()
def count_exact_binary(model: nn.Module) -> Tuple[int, int]:
    """``(n_exact, n_total)``: binary convolutions whose forward weights are all exactly +-1."""
    convs = list(binary_convs(model))
    exact = sum(bool((m.binary_weight().abs() == 1).all()) for m in convs)
    return exact, len(convs)
