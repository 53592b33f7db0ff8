"""One optimization step over several optimizers that share one mixed-precision GradScaler.

Under bi-gradual unfreezing the Lion optimizer of the binary weights holds only frozen
parameters during phases 1–2. Such an optimizer has nothing to do; stepping it through an
enabled GradScaler fails ("No inf checks were recorded for this optimizer"), because the scaler
records overflow checks only for gradients that exist. So only optimizers holding a gradient
step, and the scaler updates once per training step.
"""
from typing import Iterable

import torch

__all__ = ["has_gradients", "step_optimizers"]


def has_gradients(optimizer: torch.optim.Optimizer) -> bool:
    """Whether any parameter of ``optimizer`` carries a gradient (frozen ones carry none)."""
    return any(p.grad is not None for group in optimizer.param_groups for p in group["params"])


def step_optimizers(optimizers: Iterable[torch.optim.Optimizer], scaler: torch.amp.GradScaler) -> bool:
    """Step every optimizer that holds a gradient, then update ``scaler`` once.

    Returns False when an enabled scaler found non-finite gradients and skipped the step (it then
    lowers its scale); the weights are unchanged in that case.
    """
    active = [opt for opt in optimizers if has_gradients(opt)]
    if not active:
        return True
    scale = scaler.get_scale() if scaler.is_enabled() else None
    for opt in active:
        scaler.step(opt)
    scaler.update()
    return scale is None or scaler.get_scale() >= scale
