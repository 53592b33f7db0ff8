"""The engine beyond x86-64: which sources build on which architecture, the kernel check program
(tests/cpp/kernel_check.cpp) natively on this CPU's paths, and - where Debian's aarch64 cross
compiler and qemu-user are installed - the NEON and portable kernels bit for bit under
qemu-aarch64 and every engine source compiled for aarch64 against torch's headers.

Tools: ``apt-get install g++-aarch64-linux-gnu qemu-user`` (docs/arm.md). About 40 s on 2 cores.
"""
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from torch.utils import cpp_extension

from models.bitpacked.build import ARCH_SOURCES, CFLAGS, CSRC, EXTENSION, engine_sources

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "tests" / "cpp" / "kernel_check.cpp"
CROSS_CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64"
# What torch.utils.cpp_extension adds to the engine's own CFLAGS when it builds the extension.
TORCH_FLAGS = ["-std=c++20", "-fPIC", "-DTORCH_API_INCLUDE_EXTENSION_H", f"-DTORCH_EXTENSION_NAME={EXTENSION}"]
TIMEOUT = 600

needs_cross_tools = pytest.mark.skipif(
    shutil.which(CROSS_CXX) is None or shutil.which(QEMU) is None,
    reason=f"{CROSS_CXX} or {QEMU} is not installed (apt-get install g++-aarch64-linux-gnu qemu-user)")


def names(sources):
    return {p.name for p in sources}


def kernel_sources(machine):
    """The torch-free sources the check program links: the kernels and the CPU-feature checks."""
    return [p for p in engine_sources(machine) if p.name.startswith("kernels_") or p.name == "isa.cpp"]


def run(command, **kwargs):
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=TIMEOUT, **kwargs)


def build_check(compiler, machine, output, *flags):
    """Compile the kernel check program for ``machine`` with the engine's optimisation level."""
    built = run([compiler, "-std=c++20", "-O3", *flags, f"-I{CSRC}", "-o", output, CHECK, *kernel_sources(machine)])
    assert built.returncode == 0, built.stderr[-3000:]


def assert_all_paths_match(result, isas):
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == list(isas), result.stdout
    assert all(line.endswith("cases match the reference") for line in lines), result.stdout


def test_each_architecture_builds_its_own_isa_sources_and_every_other_source():
    every = names(CSRC.glob("*.cpp"))
    arm, x86 = names(engine_sources("aarch64")), names(engine_sources("x86_64"))
    other = names(engine_sources("riscv64"))
    assert "kernels_neon.cpp" in arm and {"kernels_avx512.cpp", "kernels_avx2.cpp"} <= x86
    assert {"ops.cpp", "isa.cpp", "kernels_portable.cpp"} <= other
    shared = {name for name in every if not Path(name).stem.endswith(sum(ARCH_SOURCES.values(), ()))}
    assert other == shared and arm == shared | {n for n in every if n.endswith("_neon.cpp")}
    assert x86 == shared | {n for n in every if n.endswith(("_avx512.cpp", "_avx2.cpp"))}
    assert names(engine_sources("arm64")) == arm and names(engine_sources("AMD64")) == x86


@pytest.mark.slow
def test_kernels_of_this_cpu_match_the_reference(tmp_path):
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        pytest.skip(f"no C++ compiler ({compiler})")
    build_check(compiler, None, tmp_path / "kernel_check")
    result = run([tmp_path / "kernel_check", "portable"])
    isas = [line.split(":")[0] for line in result.stdout.splitlines()]
    assert isas[-1:] == ["portable"], result.stdout + result.stderr
    assert_all_paths_match(result, isas)


@pytest.mark.slow
@needs_cross_tools
def test_neon_and_portable_kernels_match_the_reference_under_qemu(tmp_path):
    build_check(CROSS_CXX, "aarch64", tmp_path / "kernel_check", "-static")
    assert_all_paths_match(run([QEMU, tmp_path / "kernel_check", "neon", "portable"]), ["neon", "portable"])


@pytest.mark.slow
@needs_cross_tools
def test_every_engine_source_compiles_for_aarch64(tmp_path):
    """Object files with the extension's flags and torch's headers (no aarch64 libtorch to link against)."""
    includes = [f"-I{path}" for path in cpp_extension.include_paths()]

    def compile_one(source):
        return source.name, run([CROSS_CXX, *TORCH_FLAGS, *CFLAGS, *includes, "-c", source,
                                 "-o", tmp_path / f"{source.stem}.o"])

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(pool.map(compile_one, engine_sources("aarch64")))
    failed = {name: result.stderr[-2000:] for name, result in results.items() if result.returncode != 0}
    assert not failed, failed
    assert "kernels_neon.cpp" in results and "ops.cpp" in results
