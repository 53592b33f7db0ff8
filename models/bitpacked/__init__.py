"""Bit-packed inference engine for BNext students: XNOR/popcount binary convolutions in C++.

``convert(model)`` turns a BiCrossNet student (or a bare BNext) into an inference-only CPU network
whose binary convolutions run on 1-bit activations and weights packed 64 channels to a word; its
outputs equal the float network's bit for bit (docs/method.md §9, :mod:`.network`).
``runs.packed.load_packed(path, engine="bitpacked")`` loads a packed file straight into it. The C++ ops
build on first use (:mod:`.build`); without a compiler the engine warns once and the float network
is used.

``convert(model, engine="fused")`` (``engine="fused"`` in ``load_packed``) runs the faster network
of :mod:`.fused`, whose full-precision tail is fused C++ that rounds differently: its features are
close to the float network's, not equal (docs/engine_speed.md).
"""
from .build import ISA_VARIABLE, active_isa, available, peak_binary_macs, set_isa, supported_isas
from .engines import ENGINE_NAMES, convert
from .fused import FUSED_MICRO_BATCH, FusedBNext
from .network import DEFAULT_MICRO_BATCH, PackedBNext

__all__ = ["DEFAULT_MICRO_BATCH", "ENGINE_NAMES", "FUSED_MICRO_BATCH", "FusedBNext", "ISA_VARIABLE", "PackedBNext",
           "active_isa", "available", "convert", "peak_binary_macs", "set_isa", "supported_isas"]
