"""Bit-packed inference engine for BNext students: XNOR/popcount binary convolutions in C++.

``convert(model)`` turns a BiCrossNet student (or a bare BNext) into an inference-only CPU network
whose binary convolutions run on 1-bit activations and weights packed 64 channels to a word; its
outputs equal the float network's bit for bit (docs/method.md §9, :mod:`.network`).
``runs.packed.load_packed(path, engine="bitpacked")`` loads a packed file straight into it. The C++ ops
build on first use (:mod:`.build`); without a compiler the engine warns once and the float network
is used.
"""
from .build import ISA_VARIABLE, active_isa, available, peak_binary_macs, set_isa, supported_isas
from .network import DEFAULT_MICRO_BATCH, PackedBNext, convert

__all__ = ["DEFAULT_MICRO_BATCH", "ISA_VARIABLE", "PackedBNext", "active_isa", "available", "convert",
           "peak_binary_macs", "set_isa", "supported_isas"]
