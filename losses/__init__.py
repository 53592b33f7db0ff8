"""Training losses of BiCrossNet: cross-view triplet, teacher distillation and the full objective."""
from .distillation import kl_distillation, mse_distillation
from .objective import KD_MODES, BiCrossNetLoss
from .triplet import cross_view_triplet_loss

__all__ = ["BiCrossNetLoss", "KD_MODES", "cross_view_triplet_loss", "kl_distillation", "mse_distillation"]
