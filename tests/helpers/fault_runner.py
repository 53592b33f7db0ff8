"""Run ``train.main(argv)`` with one fault armed by the FAULT environment variable.

    kill_before_rename:<file>:<n>  SIGKILL when the n-th write of <file> is about to be renamed into
                                   place (its temporary file is complete on disk)
    kill_after_rename:<file>:<n>   SIGKILL right after the n-th rename of <file>
    signal_group:<signal>:<epoch>:<batch>  after that training step, send <signal> to the whole
                                   process group (main process and DataLoader workers), as a
                                   terminal's Ctrl-C or a cluster scheduler does
    signal_rank:<signal>:<epoch>:<batch>:<rank>  after that step, signal only the process of <rank>

Usage (from the repository root, which must be on PYTHONPATH):
``FAULT=... python tests/helpers/fault_runner.py <train.py flags>``, or under ``torchrun``.
"""
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import train
from training.trainer import Trainer


def kill_at_rename(kind: str, name: str, nth: int) -> None:
    """Wrap ``os.replace`` so the process SIGKILLs itself around the n-th rename onto ``name``."""
    real_replace, seen = os.replace, []

    def replace(src, dst):
        if Path(dst).name == name:
            seen.append(dst)
            if len(seen) == nth and kind == "kill_before_rename":
                os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
        if Path(dst).name == name and len(seen) == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace


def signal_after_step(kind: str, signame: str, epoch: int, batch: int, rank: Optional[int] = None) -> None:
    """Wrap ``Trainer.train_step`` so a signal is sent once step ``batch`` of ``epoch`` is done."""
    signum, real_step = getattr(signal, signame), Trainer.train_step

    def train_step(self, *args):
        real_step(self, *args)
        if args[-2:] == (epoch, batch):
            if kind == "signal_group":
                os.killpg(os.getpgid(0), signum)
            elif self.ctx.rank == rank:
                os.kill(os.getpid(), signum)

    Trainer.train_step = train_step


if __name__ == "__main__":
    fault, *spec = os.environ["FAULT"].split(":")
    if fault.startswith("kill_"):
        kill_at_rename(fault, spec[0], int(spec[1]))
    else:
        signal_after_step(fault, spec[0], *map(int, spec[1:]))
    sys.exit(train.main(sys.argv[1:]))
