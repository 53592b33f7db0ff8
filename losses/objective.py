"""The BiCrossNet training objective: classification + cross-view triplet + distillation."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .distillation import kl_distillation, mse_distillation
from .triplet import cross_view_triplet_loss

__all__ = ["BiCrossNetLoss", "KD_MODES"]

# Distillation losses: Hinton KL on softened logits, or the released logits+features MSE.
KD_MODES = ("kl", "mse")


class BiCrossNetLoss(nn.Module):
    """``CE + triplet + kd_weight · KD`` over the classifiers of a satellite and a drone pass.

    Every view output is a ``(logits_tuple, features_tuple)`` pair with one entry per classifier,
    as single-view networks return in train mode (teachers via ``forward_heads``). Both views share
    the class labels (one satellite and one drone image per class in a batch).

    - CE: cross-entropy of every classifier, mean over classifiers, summed over the two views.
    - triplet: cross-view batch-hard triplet loss per classifier, mean over classifiers
      (off when ``triplet_margin <= 0``).
    - KD: ``kd_mode='kl'`` Hinton KL at ``kd_temperature``, or ``'mse'`` the released
      logits+features MSE; each averaged over classifiers and summed over the two views. Only
      computed with teacher outputs and ``kd_weight > 0``.
    """

    def __init__(self, triplet_margin=0.3, kd_weight=0.0, kd_temperature=4.0, kd_mode="kl"):
        super().__init__()
        if kd_mode not in KD_MODES:
            raise ValueError(f"kd_mode must be one of {', '.join(KD_MODES)}, got {kd_mode!r}")
        if kd_weight < 0:
            raise ValueError(f"kd_weight must be >= 0, got {kd_weight}")
        if kd_mode == "kl" and kd_temperature <= 0:
            raise ValueError(f"kd_temperature must be > 0 for kd_mode 'kl', got {kd_temperature}")
        self.triplet_margin = triplet_margin
        self.kd_weight = kd_weight
        self.kd_temperature = kd_temperature
        self.kd_mode = kd_mode

    def _distill(self, student, teacher):
        (s_logits, s_feats), (t_logits, t_feats) = student, teacher
        if self.kd_mode == "kl":
            return kl_distillation(s_logits, t_logits, self.kd_temperature)
        return mse_distillation(s_logits, t_logits, s_feats, t_feats)

    def forward(self, student_sat, student_drone, labels, teacher_sat=None, teacher_drone=None):
        """Return ``(total, terms)``; ``terms`` holds detached 'ce', 'triplet', 'kd', 'total'."""
        (sat_logits, sat_feats), (drone_logits, drone_feats) = student_sat, student_drone
        zero = sat_logits[0].new_zeros(())
        ce = sum(
            torch.stack([F.cross_entropy(logits, labels) for logits in view]).mean()
            for view in (sat_logits, drone_logits)
        )
        triplet = zero
        if self.triplet_margin > 0:
            triplet = torch.stack([
                cross_view_triplet_loss(s, d, labels, labels, self.triplet_margin)
                for s, d in zip(sat_feats, drone_feats)
            ]).mean()
        kd = zero
        if (teacher_sat is None) != (teacher_drone is None):
            raise ValueError("teacher outputs must be given for both views or for neither")
        if teacher_sat is not None and self.kd_weight > 0:
            kd = self._distill(student_sat, teacher_sat) + self._distill(student_drone, teacher_drone)
        total = ce + triplet + self.kd_weight * kd
        terms = {"ce": ce, "triplet": triplet, "kd": kd, "total": total}
        return total, {k: v.detach() for k, v in terms.items()}
