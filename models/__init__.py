"""Networks of BiCrossNet: binary BNext backbones, the MCCG head, students and teachers.

Importing the package registers every model name: :func:`list_models` gives the two-view
retrieval networks (``bicrossnet_bnext_*`` students, ``mccg_convnext_*`` teachers),
``list_models(None)`` adds the bare ImageNet backbones (``bnext_*``).
"""
from . import bicrossnet, teacher  # noqa: F401  (their @register_model builders fill the registry)
from ._registry import build_model, list_models, model_option_names, register_model
from .multi_view import MultiViewNet

__all__ = ["MultiViewNet", "build_model", "list_models", "model_option_names", "register_model"]
