"""Networks of BiCrossNet: binary BNext backbones, the MCCG head, students and teachers.

Importing the package registers every model name (see :func:`list_models`).
"""
from . import bicrossnet, teacher  # noqa: F401  (registers bicrossnet_bnext_* and mccg_convnext_*)
from .registry import build_model, is_model, list_models, register_model
from .two_view import TwoViewNet

__all__ = ["TwoViewNet", "build_model", "is_model", "list_models", "register_model"]
