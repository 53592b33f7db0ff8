"""Stopping a run cleanly on Ctrl-C, or on the SIGTERM that cluster schedulers send before a kill."""
import contextlib
import signal
from typing import Iterator

__all__ = ["STOP_SIGNALS", "stop_on_signals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(trainer) -> Iterator[None]:
    """While the block runs, a first stop signal sets ``trainer.interrupted`` (the trainer then
    finishes its step, saves and returns) and a second one aborts at once; the previous handlers
    are put back afterwards."""

    def on_signal(signum, _frame):
        # DataLoader workers are forked after this is installed and inherit it, so a signal sent
        # to the whole process group (Ctrl-C in a terminal, a scheduler's SIGTERM) does not kill
        # them under the main process.
        trainer.interrupted = trainer.interrupted or signum
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
