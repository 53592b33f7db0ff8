"""Optimizers and learning-rate schedules for students and teachers.

Optimizers are built over every parameter up front; frozen parameters simply carry no gradient
(see :mod:`optim.unfreeze`), so unfreezing never rebuilds an optimizer and checkpoints always
hold the same optimizer states.
"""
import torch
from timm.optim import Lion

from .partition import partition_parameters

__all__ = ["OPTIMIZER_CHOICES", "build_optimizers", "build_schedulers"]

OPTIMIZER_CHOICES = ("adamlion", "adamwlion", "sgd", "adam", "lion")


def _optimizer(cls, groups, **defaults):
    """``cls`` over the non-empty groups, or None when every group is empty."""
    groups = [g for g in groups if g["params"]]
    return cls(groups, **defaults) if groups else None


def build_optimizers(model, name, lr, *, lion_lr_ratio=1 / 6, lion_betas=(0.9, 0.99), weight_decay=0.0,
                     momentum=0.9, backbone_lr_scale=0.3):
    """Return ``{key: optimizer}`` for recipe ``name`` (keys 'adam', 'adamw', 'lion', 'sgd').

    - ``adamlion`` / ``adamwlion`` (bi-partitioned): binary latent weights → Lion at
      ``lr · lion_lr_ratio`` without weight decay; every other parameter → Adam / AdamW at ``lr``.
    - ``sgd`` (teacher recipe): Nesterov SGD, backbone at ``lr · backbone_lr_scale``, head at ``lr``.
    - ``adam`` / ``lion``: one optimizer over all parameters (Lion again at ``lr · lion_lr_ratio``,
      so ``lr`` keeps one meaning across choices).

    Weight decay never applies to binary latent weights: it would pull them towards zero, where
    their sign, the only thing the forward pass uses, flips at random. Optimizers with no
    parameters are left out (a full-precision teacher gets no Lion).
    """
    if name not in OPTIMIZER_CHOICES:
        raise ValueError(f"optimizer name must be one of {', '.join(OPTIMIZER_CHOICES)}, got {name!r}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    parts = {group: [p for _, p in params] for group, params in partition_parameters(model).items()}
    full_precision = parts["head"] + parts["full_precision"]
    binary = {"params": parts["binary"], "weight_decay": 0.0}
    lion = dict(lr=lr * lion_lr_ratio, betas=lion_betas)

    if name in ("adamlion", "adamwlion"):
        key, cls = ("adam", torch.optim.Adam) if name == "adamlion" else ("adamw", torch.optim.AdamW)
        optimizers = {
            key: _optimizer(cls, [{"params": full_precision}], lr=lr, weight_decay=weight_decay),
            "lion": _optimizer(Lion, [binary], **lion),
        }
    elif name == "sgd":
        if momentum <= 0:
            raise ValueError(f"momentum must be > 0 for Nesterov SGD, got {momentum}")
        backbone_lr = lr * backbone_lr_scale
        groups = [{"params": parts["full_precision"], "lr": backbone_lr}, dict(binary, lr=backbone_lr),
                  {"params": parts["head"]}]
        optimizers = {"sgd": _optimizer(torch.optim.SGD, groups, lr=lr, momentum=momentum, nesterov=True,
                                        weight_decay=weight_decay)}
    elif name == "adam":
        optimizers = {"adam": _optimizer(torch.optim.Adam, [{"params": full_precision}, binary], lr=lr,
                                         weight_decay=weight_decay)}
    else:
        optimizers = {"lion": _optimizer(Lion, [{"params": full_precision}, binary], weight_decay=weight_decay,
                                         **lion)}
    return {key: opt for key, opt in optimizers.items() if opt is not None}


def build_schedulers(optimizers, milestones=(80, 120, 200), gamma=0.1):
    """One MultiStepLR per optimizer (stepped once per epoch), keyed like ``optimizers``."""
    return {key: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=gamma)
            for key, opt in optimizers.items()}
