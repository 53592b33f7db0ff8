"""The BiCrossNet training objective: classification + cross-view triplet + distillation."""
import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from .distillation import kl_distillation, mse_distillation
from .triplet import cross_view_triplet_loss

__all__ = ["BiCrossNetLoss", "KD_MODES"]

# Distillation losses: Hinton KL on softened logits, or the released logits+features MSE.
KD_MODES = ("kl", "mse")


class BiCrossNetLoss(nn.Module):
    """``CE + triplet + kd_weight · KD`` over the classifiers of every view of a training step.

    ``forward(student_views, labels, teacher_views=None)`` takes one output per view (satellite,
    drone, and street with three views); every output is a ``(logits_tuple, features_tuple)``
    pair with one entry per classifier, as single-view networks return in train mode (teachers via
    ``forward_heads``). All views share the class labels (one image per view and class in a batch).

    - CE: cross-entropy of every classifier, mean over classifiers, summed over the views.
    - triplet: cross-view batch-hard triplet loss per classifier and per pair of different views
      (anchors of each view mined against the other view only), mean over classifiers and pairs,
      so two and three views weigh it alike (off when ``triplet_margin <= 0``).
    - KD: ``kd_mode='kl'`` Hinton KL at ``kd_temperature``, or ``'mse'`` the released
      logits+features MSE; each averaged over classifiers and summed over the views, the teacher
      seeing the same images. Only computed with teacher outputs and ``kd_weight > 0``.
    """

    def __init__(self, triplet_margin=0.3, kd_weight=0.0, kd_temperature=4.0, kd_mode="kl"):
        super().__init__()
        self.check_distillation(kd_weight, kd_temperature, kd_mode)
        self.triplet_margin = triplet_margin
        self.kd_weight = kd_weight
        self.kd_temperature = kd_temperature
        self.kd_mode = kd_mode

    def _distill(self, student, teacher):
        (s_logits, s_feats), (t_logits, t_feats) = student, teacher
        if self.kd_mode == "kl":
            return kl_distillation(s_logits, t_logits, self.kd_temperature)
        return mse_distillation(s_logits, t_logits, s_feats, t_feats)

    def _triplet(self, student_views, labels):
        features = [feats for _, feats in student_views]
        return torch.stack([
            cross_view_triplet_loss(a, b, labels, labels, self.triplet_margin)
            for first, second in itertools.combinations(features, 2) for a, b in zip(first, second)
        ]).mean()

    @staticmethod
    def check_distillation(kd_weight, kd_temperature, kd_mode):
        """Raise ``ValueError`` for distillation settings the loss cannot take (the message names the
        parameter, which is also the training flag's name): the rule, for callers validating early."""
        if kd_mode not in KD_MODES:
            raise ValueError(f"kd_mode must be one of {', '.join(KD_MODES)}, got {kd_mode!r}")
        if kd_weight < 0:
            raise ValueError(f"kd_weight must be >= 0, got {kd_weight}")
        if kd_mode == "kl" and kd_temperature <= 0:
            raise ValueError(f"kd_temperature must be > 0 for kd_mode kl, got {kd_temperature}")

    def forward(self, student_views, labels, teacher_views=None):
        """Return ``(total, terms)``; ``terms`` holds detached 'ce', 'triplet', 'kd', 'total'."""
        if len(student_views) < 2:
            raise ValueError(f"student_views must hold at least 2 views, got {len(student_views)}")
        if teacher_views is not None and len(teacher_views) != len(student_views):
            raise ValueError(f"teacher_views must hold one output per student view ({len(student_views)}), "
                             f"got {len(teacher_views)}")
        zero = student_views[0][0][0].new_zeros(())
        ce = sum(torch.stack([F.cross_entropy(logits, labels) for logits in view_logits]).mean()
                 for view_logits, _ in student_views)
        triplet = self._triplet(student_views, labels) if self.triplet_margin > 0 else zero
        kd = zero
        if teacher_views is not None and self.kd_weight > 0:
            kd = sum(self._distill(s, t) for s, t in zip(student_views, teacher_views))
        total = ce + triplet + self.kd_weight * kd
        terms = {"ce": ce, "triplet": triplet, "kd": kd, "total": total}
        return total, {k: v.detach() for k, v in terms.items()}
