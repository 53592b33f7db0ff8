"""Networks of BiCrossNet: binary BNext backbones, the MCCG head, students and teachers.

Importing the package registers every model name (see :func:`list_models`).
"""
from .registry import build_model, is_model, list_models, register_model

__all__ = ["build_model", "is_model", "list_models", "register_model"]
