"""Model-name registry after timm's ``_registry.py``: ``@register_model`` on one builder per size.

Every buildable network is registered under its function name with a kind: ``retrieval`` for the
two-view networks that train.py trains, ``backbone`` for the bare ImageNet backbones, which only
the complexity counts build. A run's ``opts.yaml`` stores the model name and the options that
:func:`model_option_names` reads off the builder's signature, so ``test.py`` and ``export.py``
rebuild exactly the network that ``train.py`` trained.
"""
import inspect
from typing import Callable, Dict, List, NamedTuple, Optional

RETRIEVAL = "retrieval"
BACKBONE = "backbone"
MODEL_KINDS = (RETRIEVAL, BACKBONE)


class _Entry(NamedTuple):
    builder: Callable
    kind: str


_MODELS: Dict[str, _Entry] = {}


def register_model(fn: Optional[Callable] = None, *, kind: str = RETRIEVAL):
    """Register ``fn(num_classes, **options) -> nn.Module`` under its function name.

    Use bare (``@register_model``) for retrieval networks, or ``@register_model(kind="backbone")``.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")

    def register(builder: Callable) -> Callable:
        name = builder.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = _Entry(builder, kind)
        return builder

    return register if fn is None else register(fn)


def list_models(kind: Optional[str] = RETRIEVAL) -> List[str]:
    """Sorted names of the registered models of ``kind`` (None: every buildable model)."""
    if kind is not None and kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {', '.join(MODEL_KINDS)} or None, got {kind!r}")
    return sorted(name for name, entry in _MODELS.items() if kind is None or entry.kind == kind)


def _entry(name: str) -> _Entry:
    if name not in _MODELS:
        raise ValueError(f"model {name!r} is not registered; choose one of: {', '.join(list_models(None))}")
    return _MODELS[name]


def model_option_names(name: str) -> List[str]:
    """Keyword options the builder of ``name`` accepts (students and teachers take different ones)."""
    params = inspect.signature(_entry(name).builder).parameters
    return [p for p in params if p != "num_classes"]


def build_model(name: str, num_classes: int, **options):
    """Build a registered model; an unknown name is a ``ValueError`` listing the choices."""
    return _entry(name).builder(num_classes=num_classes, **options)
