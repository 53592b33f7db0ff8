"""Bi-gradual unfreezing: head first, then the full-precision backbone, then the binary weights.

A freshly initialised head sends large, noisy gradients; letting them reach pretrained binary
latent weights flips signs the ImageNet training settled. The schedule lets the head settle
first, then the full-precision parts adapt, and only then the binary weights.
"""
import torch.nn as nn

from .partition import partition_parameters

__all__ = ["FROZEN_BN_CHOICES", "BiGradualUnfreezing", "hold_frozen_batchnorm"]

# What BatchNorm layers with frozen parameters do with their running statistics in train mode.
FROZEN_BN_CHOICES = ("update", "freeze")


def hold_frozen_batchnorm(model: nn.Module) -> int:
    """Put every BatchNorm layer whose parameters are all frozen in eval mode, so its running
    statistics stay as loaded (in phase 1, the backbone's); call after ``model.train()``.
    Returns how many layers it holds."""
    held = 0
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and params and not any(p.requires_grad for p in params):
            module.eval()
            held += 1
    return held

_TRAINABLE = {
    1: ("head",),
    2: ("head", "full_precision"),
    3: ("head", "full_precision", "binary"),
}
_PHASE_NAMES = {
    1: "head only",
    2: "head + full-precision backbone",
    3: "all parameters (binary weights included)",
}


class BiGradualUnfreezing:
    """Three training phases switched by epoch: ``[0, n1)``, ``[n1, n2)``, ``[n2, ∞)``.

    ``n1 = n2 = 0`` trains everything from the start; ``n1 = n2`` skips phase 2 (the released
    scripts use 20/20). Freezing sets ``requires_grad=False`` and clears ``.grad``: PyTorch
    optimizers skip parameters without a gradient, so frozen parameters get no update at all,
    weight decay and momentum included, and the optimizers can hold every parameter from the start.
    """

    def __init__(self, model, n1, n2):
        self.check_boundaries(n1, n2)
        self.n1, self.n2 = n1, n2
        self.groups = partition_parameters(model)

    @staticmethod
    def check_boundaries(n1, n2):
        """Raise ``ValueError`` unless ``0 <= n1 <= n2``: the phase rule, for callers validating early."""
        if n1 < 0:
            raise ValueError(f"n1 must be >= 0, got {n1}")
        if n2 < n1:
            raise ValueError(f"n2 ({n2}) must be >= n1 ({n1})")

    def phase(self, epoch):
        """Phase number (1, 2 or 3) of a 0-based epoch."""
        if epoch < self.n1:
            return 1
        return 2 if epoch < self.n2 else 3

    def apply(self, epoch):
        """Set ``requires_grad`` for ``epoch`` and return its phase."""
        phase = self.phase(epoch)
        for group, params in self.groups.items():
            trainable = group in _TRAINABLE[phase]
            for _, param in params:
                param.requires_grad_(trainable)
                if not trainable:
                    param.grad = None
        return phase

    @staticmethod
    def phase_name(phase):
        return _PHASE_NAMES[phase]
