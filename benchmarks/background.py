"""Busy processes that load the CPU while a benchmark times, to see how an engine holds up when it
shares the machine (``--background N`` of :mod:`benchmarks.feature_throughput`)."""
import contextlib
import subprocess
import sys
from typing import Iterator

# A pure-Python spin: one busy core per process, no memory traffic to speak of.
SPIN = "while True: pass"


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """Runs ``count`` spinning processes for the duration of the block, and stops them after it."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    processes = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(count)]
    try:
        yield
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait()
