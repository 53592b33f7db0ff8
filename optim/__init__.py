"""Parameter partition, bi-gradual unfreezing and the optimizer/scheduler factory of BiCrossNet."""
from .factory import OPTIMIZER_CHOICES, build_optimizers, build_schedulers
from .partition import PARAMETER_GROUPS, partition_parameters
from .unfreeze import BiGradualUnfreezing

__all__ = [
    "OPTIMIZER_CHOICES", "PARAMETER_GROUPS", "BiGradualUnfreezing", "build_optimizers", "build_schedulers",
    "partition_parameters",
]
