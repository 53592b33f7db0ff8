"""train.py flags for tiny runs on the CPU, and reading back what a run wrote."""
import csv

import torch

from losses.objective import BiCrossNetLoss

# The ConvNeXt teacher recipe is ~20x faster per step than the BNext student on CPU; the student
# is used where its own state (Adam + Lion, binary constraints) matters.
TEACHER = ("--model", "mccg_convnext_atto", "--optimizer", "sgd", "--lr", "0.01", "--bigradual_n1", "0",
           "--bigradual_n2", "0")


def base_args(root, ckpt, name, *extra):
    """Flags of a tiny 32 x 32 run on ``root``/train (the dataset root), written to ``ckpt``/``name``."""
    return ["--name", name, "--checkpoint_dir", str(ckpt), "--data_dir", str(root / "train"), "--h", "32",
            "--w", "32", "--batchsize", "3", "--num_workers", "0", "--device", "cpu", *extra]


def train_args(data, ckpt, name, *extra):
    """Flags of a tiny seeded two-epoch run on the training folder ``data``."""
    return ["--name", name, "--checkpoint_dir", str(ckpt), "--data_dir", str(data), "--h", "32", "--w", "32",
            "--batchsize", "3", "--num_workers", "0", "--device", "cpu", "--seed", "7", "--epochs", "2", *extra]


def losses(run_dir, key="total"):
    """One column of the run's metrics.csv, one float per epoch."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(row[key]) for row in csv.DictReader(f)]


def state(run_dir, which="last.pth"):
    """The model weights of one of the run's checkpoints."""
    return torch.load(run_dir / which, map_location="cpu", weights_only=True)["model"]


def nan_on_calls(monkeypatch, loss_calls=(), gradient_calls=()):
    """Make BiCrossNetLoss return a NaN loss, or a finite loss with NaN gradients, on the given calls."""
    real_forward, calls = BiCrossNetLoss.forward, []

    def forward(self, student_views, *args):
        total, terms = real_forward(self, student_views, *args)
        calls.append(len(calls))
        if calls[-1] in loss_calls:
            total = total * float("nan")
            terms = dict(terms, total=total.detach())
        elif calls[-1] in gradient_calls:  # d sqrt(x)/dx is infinite at 0, and 0 * inf = NaN reaches the weights
            feature = student_views[0][1][0]  # the satellite view's first branch feature
            total = total + 0 * (feature - feature.detach()).pow(2).sum().sqrt()
        return total, terms

    monkeypatch.setattr(BiCrossNetLoss, "forward", forward)
