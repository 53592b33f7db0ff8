"""Split a network's parameters into the three groups BiCrossNet trains differently.

Bi-gradual unfreezing and bi-partitioned optimization both act on the same split, so it is
computed in one place: the latent weights of binary convolutions (sign-sensitive, optimized by
Lion, unfrozen last), the new head, and every other (full-precision) backbone parameter.
"""
from models.binary import BinaryConv2d

__all__ = ["PARAMETER_GROUPS", "partition_parameters"]

PARAMETER_GROUPS = ("head", "full_precision", "binary")


def _group_of(model, name):
    module_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(module_name)
    if isinstance(owner, BinaryConv2d) and attr == "weight":
        return "binary"
    if name.startswith("head."):
        return "head"
    return "full_precision"


def partition_parameters(model):
    """Return ``{'head': [...], 'full_precision': [...], 'binary': [...]}`` of ``(name, parameter)``.

    binary: ``weight`` of every :class:`~models.binary.BinaryConv2d`; head: parameters under
    ``model.head``; full_precision: everything else. Every parameter lands in exactly one group.
    A tensor shared under names of different groups (e.g. a binary weight tied to a head layer),
    or a binary convolution whose weight is not a registered parameter, raises ``ValueError``:
    either would let one optimizer miss a weight or two optimizers update the same one.
    """
    if not hasattr(model, "head"):
        raise ValueError(f"{type(model).__name__} has no `.head` submodule; pass the single-view network")
    for module_name, module in model.named_modules():
        if isinstance(module, BinaryConv2d) and "weight" not in module._parameters:
            raise ValueError(f"binary convolution {module_name!r} has no registered weight parameter")

    groups = {group: [] for group in PARAMETER_GROUPS}
    seen = {}  # id(parameter) -> (group, first name)
    for name, param in model.named_parameters(remove_duplicate=False):
        group = _group_of(model, name)
        if id(param) in seen:
            first_group, first_name = seen[id(param)]
            if first_group != group:
                raise ValueError(
                    f"parameter {name!r} is the same tensor as {first_name!r} but belongs to group "
                    f"{group!r} instead of {first_group!r}"
                )
            continue
        seen[id(param)] = (group, name)
        groups[group].append((name, param))
    return groups
