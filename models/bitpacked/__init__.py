"""Bit-packed inference engine for BNext students: XNOR/popcount binary convolutions in C++.

``convert(model)`` turns a BiCrossNet student (or a bare BNext) into an inference-only network
whose binary convolutions run on 1-bit activations and weights packed 64 channels to a word, with
integer results equal to the float path's (docs/method.md §9). ``models.load_packed(path,
engine="bitpacked")`` loads a packed file straight into it. The C++ ops build on first use
(:mod:`.build`); without a compiler the engine warns once and the float network is used.
"""
from .build import ISA_VARIABLE, active_isa, available, peak_binary_macs, set_isa, supported_isas
from .network import DEFAULT_MICRO_BATCH, PackedBNext, convert

__all__ = ["DEFAULT_MICRO_BATCH", "ISA_VARIABLE", "PackedBNext", "active_isa", "available", "convert",
           "peak_binary_macs", "set_isa", "supported_isas"]
