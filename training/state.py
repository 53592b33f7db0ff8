"""Training state besides weights and optimizers: the RNG streams and the running sums of an epoch.

Checkpoints keep both so an interrupted epoch resumes bit for bit, and keep them in types that
``torch.load(weights_only=True)`` accepts (tensors, numbers, strings, containers): NumPy's state
tuple holds an ``ndarray``, so it is stored as a dict with the key array as an int64 tensor.
"""
import contextlib
import random
from dataclasses import dataclass, field
from typing import Dict, Iterator

import numpy as np
import torch

from runs.checkpoints import numpy_rng_entry

__all__ = ["EpochStats", "item_seed", "rng_state", "seed_epoch", "seeded_rngs",
           "set_rng_state", "shuffle_generator"]


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Re-seed every RNG of this process at each epoch start (dropout and other draws of the
    training step), so a run resumed at an epoch boundary is identical to the uninterrupted one."""
    value = seed * 100_003 + epoch * 101 + rank
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def shuffle_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch ``epoch``'s shuffled order (the same on every process)."""
    generator = torch.Generator()
    generator.manual_seed(seed * 100_003 + epoch)
    return generator


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of item ``index``'s random picks and augmentations in epoch ``epoch``: a function of
    the three numbers only, so neither the loading process nor the items loaded before matter."""
    entropy = [seed % 2**64, epoch, index]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


@contextlib.contextmanager
def seeded_rngs(value: int) -> Iterator[None]:
    """Run the block with Python's, NumPy's and torch's CPU RNGs seeded from ``value``; the states
    they had before come back afterwards, so the caller's own random streams are untouched.

    Only the CPU generator is seeded: ``torch.manual_seed`` would also reseed every accelerator's
    generator (and, with none initialized, record a stack trace for each), about 0.7 ms per item."""
    python, numpy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.default_generator.manual_seed(value)
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(cpu)


def rng_state() -> dict:
    """The state of every RNG of this process, as a checkpoint's ``"rng"`` entry."""
    state = {"torch": torch.get_rng_state(), "numpy": numpy_rng_entry(np.random.get_state()),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put back a :func:`rng_state`; tensors may come back on the device a checkpoint was mapped to."""
    numpy = state["numpy"]
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state((numpy["algorithm"], numpy["keys"].cpu().numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@dataclass
class EpochStats:
    """Running sums of the logged quantities; saved mid-epoch so an interrupted epoch resumes exactly."""
    sums: Dict[str, float] = field(default_factory=dict)
    steps: int = 0
    correct: int = 0
    seen: int = 0
    skipped: int = 0

    def add(self, terms: Dict[str, torch.Tensor], correct: int, seen: int) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.steps += 1
        self.correct += correct
        self.seen += seen

    def means(self) -> Dict[str, float]:
        out = {k: v / max(self.steps, 1) for k, v in self.sums.items()}
        out["train_acc"] = 100.0 * self.correct / max(self.seen, 1)
        out["skipped_steps"] = self.skipped
        return out
