"""Model-name registry, in the style of timm: ``@register_model`` on a builder function.

A run's ``opts.yaml`` stores the model name and options, so ``test.py`` and ``export.py``
rebuild exactly the network that ``train.py`` trained.
"""
import functools
from typing import Callable, Dict, List

from utils.errors import UserError

_MODEL_BUILDERS: Dict[str, Callable] = {}


def register_model(fn: Callable) -> Callable:
    """Register ``fn(num_classes, **options) -> nn.Module`` under its function name."""
    name = fn.__name__
    if name in _MODEL_BUILDERS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODEL_BUILDERS[name] = fn
    return fn


def register_variant(create: Callable, variant: str, name: str) -> None:
    """Register ``name(num_classes, **options)`` = ``create(variant, num_classes, **options)``.

    A partial keeps ``create``'s keyword signature, from which the registry reads the options a
    model accepts, so every size of a family declares them once.
    """
    builder = functools.partial(create, variant)
    builder.__name__ = name
    builder.__doc__ = f"{create.__name__}({variant!r}, ...): {create.__doc__.splitlines()[0]}"
    register_model(builder)


def list_models() -> List[str]:
    """Sorted names accepted by :func:`build_model`."""
    return sorted(_MODEL_BUILDERS)


def is_model(name: str) -> bool:
    return name in _MODEL_BUILDERS


def model_option_names(name: str) -> List[str]:
    """Keyword options the builder of ``name`` accepts (students and teachers take different ones)."""
    import inspect

    params = inspect.signature(_MODEL_BUILDERS[name]).parameters
    return [p for p in params if p != "num_classes"]


def build_model(name: str, num_classes: int, **options):
    """Build a registered model; an unknown name is a :class:`UserError` listing the choices."""
    if name not in _MODEL_BUILDERS:
        raise UserError(f"--model {name!r} is not a known model; choose one of: {', '.join(list_models())}")
    return _MODEL_BUILDERS[name](num_classes=num_classes, **options)
