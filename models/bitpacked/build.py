"""Compiling and loading the engine's C++ ops (``csrc/``) on first use.

``torch.utils.cpp_extension.load`` builds them with the system compiler and ninja and caches the
library in torch's extensions folder (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``),
rebuilding only when a source changes. One library carries every instruction-set path of the
machine's architecture: a source named ``*_avx512.cpp`` or ``*_avx2.cpp`` compiles on x86-64 only
(each under its own ``#pragma GCC target``), ``*_neon.cpp`` on AArch64 only, every other source
everywhere (:func:`engine_sources`). The path is chosen at run time from the CPU's features, or forced
with ``BICROSSNET_BITPACKED_ISA=avx512|avx2|neon|portable``.

Where the build cannot run (no compiler, no ninja, a failed compile) :func:`load_ops` warns once,
in one line, and returns None; callers then keep the float path.
"""
import logging
import os
import platform
import shutil
import sysconfig
import warnings
from pathlib import Path
from typing import List, Optional

import torch

from utils.errors import UserError, first_line

EXTENSION = "bicrossnet_bitpacked"
ISA_VARIABLE = "BICROSSNET_BITPACKED_ISA"
CSRC = Path(__file__).resolve().parent / "csrc"
# -fopenmp: at::parallel_for is inline OpenMP code, compiled into this library.
CFLAGS = ["-O3", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
# File-name endings of the sources that compile on one architecture only; other sources build everywhere.
ARCH_SOURCES = {"x86_64": ("_avx512", "_avx2"), "aarch64": ("_neon",)}
ARCH_NAMES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
# Longest build error shown in the fallback warning (the compiler's output follows its first line).
MAX_REASON = 200

_state = {"tried": False, "ops": None}


def _path_with_ninja() -> str:
    """PATH for the build: pip's ``ninja`` sits in the interpreter's scripts folder, which is not on
    PATH when a virtual environment's python runs without being activated."""
    path = os.environ.get("PATH", "")
    scripts = sysconfig.get_path("scripts")
    if shutil.which("ninja", path=path) is None and shutil.which("ninja", path=scripts):
        return os.pathsep.join([scripts, path])
    return path


def engine_sources(machine: Optional[str] = None) -> List[Path]:
    """The C++ sources that build on ``machine`` (a ``platform.machine()`` name, this one's by default):
    the ISA-specific files of its architecture and every file that is not ISA-specific."""
    arch = ARCH_NAMES.get((machine or platform.machine()).lower())
    foreign = tuple(end for name, ends in ARCH_SOURCES.items() if name != arch for end in ends)
    return sorted(p for p in CSRC.glob("*.cpp") if not p.stem.endswith(foreign))


def _build() -> None:
    from torch.utils import cpp_extension

    sources = [str(p) for p in engine_sources()]
    original = os.environ.get("PATH")
    os.environ["PATH"] = _path_with_ninja()
    try:
        cpp_extension.load(name=EXTENSION, sources=sources, extra_cflags=CFLAGS, extra_ldflags=LDFLAGS,
                           is_python_module=False, verbose=False)
    finally:
        if original is None:
            del os.environ["PATH"]
        else:
            os.environ["PATH"] = original


def _build_quietly() -> None:
    """Build with torch's own notes (CUDA home, compiler checks) silenced: the caller reports failure."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _build()
    finally:
        logger.setLevel(level)


def _apply_isa_variable(ops) -> None:
    isa = os.environ.get(ISA_VARIABLE)
    if not isa:
        return
    available = list(ops.supported_isas())
    if isa not in available:
        raise UserError(f"{ISA_VARIABLE}={isa}: this CPU runs {', '.join(available)}")
    ops.set_isa(isa)


def _reason(err: Exception) -> str:
    """The telling line of a build failure: the compiler's error or the missing program, not ninja's
    command line that torch's message starts with."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    telling = [line for line in lines[1:] if "error" in line.lower() or "not found" in line.lower()]
    reason = telling[0] if telling else first_line(err)
    return reason if len(reason) <= MAX_REASON else reason[:MAX_REASON] + "…"


def load_ops():
    """``torch.ops.bicrossnet_bitpacked``, built on first call; None (after one warning) if it cannot be built.

    ``BICROSSNET_BITPACKED_ISA`` is read once, when the ops load; :func:`set_isa` changes the path later.
    """
    if not _state["tried"]:
        try:
            _build_quietly()
        except Exception as err:  # compiler, ninja, linker and loader failures all end here
            _state["tried"] = True
            warnings.warn(f"bitpacked engine unavailable, using the float path ({_reason(err)})", stacklevel=2)
            return None
        ops = torch.ops.bicrossnet_bitpacked
        _apply_isa_variable(ops)  # a bad value raises on every call until it is fixed
        _state.update(tried=True, ops=ops)
    return _state["ops"]


def available() -> bool:
    """Can the engine run here (builds it on first call)?"""
    return load_ops() is not None


def _require():
    ops = load_ops()
    if ops is None:
        raise RuntimeError("the bitpacked engine is not available on this machine (see the warning above)")
    return ops


def supported_isas() -> List[str]:
    """Instruction-set paths this CPU can run, best first (``portable`` is always there)."""
    return list(_require().supported_isas())


def active_isa() -> str:
    """The path the kernels use now."""
    return _require().active_isa()


def set_isa(name: Optional[str] = None) -> str:
    """Use path ``name`` (None: the best this CPU has) and return it; a path the CPU lacks is a ValueError."""
    ops = _require()
    available_isas = list(ops.supported_isas())
    name = available_isas[0] if name is None else name
    if name not in available_isas:
        raise ValueError(f"instruction set {name!r} is not available here; choose one of {', '.join(available_isas)}")
    ops.set_isa(name)
    return name


def peak_binary_macs(repeats: int = 20000) -> float:
    """Binary MAC/s of the active path's inner kernel on cache-resident data, on torch's CPU threads."""
    return float(_require().peak(repeats))
