"""Logit distillation from a frozen full-precision teacher.

Both functions take one tensor per classifier (the MCCG head has several branches) and average
over classifiers. Teacher tensors are detached: the teacher is never trained by these losses.
"""
import torch
import torch.nn.functional as F

__all__ = ["kl_distillation", "mse_distillation"]


def _check_pairs(student, teacher, what):
    if len(student) != len(teacher):
        raise ValueError(f"student has {len(student)} {what} but the teacher has {len(teacher)}")


def kl_distillation(student_logits, teacher_logits, temperature):
    """Hinton distillation ``T² · KL(softmax(t/T) ‖ softmax(s/T))``, batch mean, mean over classifiers.

    The T² factor keeps the gradient scale independent of the temperature (soft-target gradients
    shrink as 1/T²), so the distillation weight need not be retuned when T changes.
    """
    _check_pairs(student_logits, teacher_logits, "classifiers")
    losses = [
        F.kl_div(
            F.log_softmax(s / temperature, dim=1),
            F.softmax(t.detach() / temperature, dim=1),
            reduction="batchmean",
        )
        for s, t in zip(student_logits, teacher_logits)
    ]
    return torch.stack(losses).mean() * temperature ** 2


def mse_distillation(student_logits, teacher_logits, student_feats, teacher_feats):
    """Released BiCrossNet variant: ``(MSE(logits) + MSE(features)) / 4``.

    Each MSE is taken over the classifiers stacked into one tensor, i.e. the mean over every
    element, which equals the mean over classifiers of the per-classifier MSE. The division by 4
    is kept as released so that a weight tuned on the released code carries over.
    """
    _check_pairs(student_logits, teacher_logits, "classifiers")
    _check_pairs(student_feats, teacher_feats, "feature branches")
    logits = F.mse_loss(torch.stack(tuple(student_logits)), torch.stack(tuple(teacher_logits)).detach())
    feats = F.mse_loss(torch.stack(tuple(student_feats)), torch.stack(tuple(teacher_feats)).detach())
    return (logits + feats) / 4
