"""Choosing the inference network of a BNext student: ``bitpacked`` (bit for bit the float
network's results, :mod:`.network`) or ``fused`` (faster, rounds differently, :mod:`.fused`)."""
import copy
from typing import Optional

import torch.nn as nn

from ..bicrossnet import BiCrossNet
from ..bnext import BNext
from .build import load_ops
from .fused import FUSED_MICRO_BATCH, FusedBiCrossNet, FusedBNext
from .network import DEFAULT_MICRO_BATCH, PackedBNext

NETWORKS = {"bitpacked": (PackedBNext, DEFAULT_MICRO_BATCH), "fused": (FusedBNext, FUSED_MICRO_BATCH)}
ENGINE_NAMES = tuple(NETWORKS)


def convert(model: nn.Module, micro_batch: Optional[int] = None, engine: str = "bitpacked") -> nn.Module:
    """Inference copy of a BNext student (a BiCrossNet on BNext, or a bare BNext) on packed bits.

    ``micro_batch``: images per pass (None: the engine's default). The original model is left as
    it is. Where the C++ ops cannot be built this warns once and returns ``model`` itself, in eval
    mode: the float path. Any other network or engine name is a ValueError.
    """
    if engine not in NETWORKS:
        raise ValueError(f"engine must be one of {', '.join(NETWORKS)}, got {engine!r}")
    backbone = model.backbone if isinstance(model, BiCrossNet) else model
    if not isinstance(backbone, BNext):
        raise ValueError(f"the {engine} engine runs BNext students; {type(backbone).__name__} is not one")
    ops = load_ops()
    if ops is None:
        return model.eval()
    network, default_micro_batch = NETWORKS[engine]
    packed = network(ops, backbone, default_micro_batch if micro_batch is None else micro_batch)
    if backbone is model:
        return packed
    wrapper = FusedBiCrossNet if engine == "fused" else BiCrossNet
    return wrapper(packed, copy.deepcopy(model.head)).eval()
