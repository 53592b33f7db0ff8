"""train.py flags for tiny runs on the CPU, and reading back what a run wrote."""
import csv

import torch


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
