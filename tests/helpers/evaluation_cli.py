"""test.py in this process, run directories written without training, and a toy retrieval network."""
import contextlib
import importlib.util
import io
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from helpers import REPO
from helpers.errors import assert_one_line_error
from models import build_model
from runs.claim import save_opts
from utils.files import save_checkpoint

MODEL, NUM_CLASSES, SIZE = "bicrossnet_bnext_tiny", 6, 64


def load_cli():
    """test.py as a module (``import test`` would find Python's own test package)."""
    spec = importlib.util.spec_from_file_location("bicrossnet_test_cli", REPO / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLI = load_cli()


def run_cli(*argv):
    """Run test.py's main in-process; returns its standard output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert CLI.main([*map(str, argv), "--device", "cpu", "--num_workers", "0", "--batchsize", "32"]) == 0
    return out.getvalue()


def assert_test_cli_error(capsys, argv, *fragments):
    """test.py with ``argv`` exits with code 2 and prints only one ``error: ...`` line holding ``fragments``."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(*argv)
    assert exit_info.value.code == 2
    assert_one_line_error(capsys.readouterr().err, *fragments, alone=True)


def write_opts(run_dir, model=MODEL, dataset="university", altitude=None, *, model_options=None,
               num_classes=NUM_CLASSES):
    """opts.yaml as train.py writes it, for SIZE x SIZE inputs."""
    save_opts(run_dir, {"model": model, "model_options": model_options or {}, "num_classes": num_classes,
                        "dataset": dataset, "altitude": altitude, "h": SIZE, "w": SIZE})
    return Path(run_dir)


def write_run(run_dir, model=MODEL, dataset="university", altitude=None, state_dict=None, *, model_options=None,
              num_classes=NUM_CLASSES):
    """A run directory as train.py leaves it: opts.yaml and last.pth (a freshly initialized ``model`` built
    with ``model_options`` unless ``state_dict`` is given)."""
    if state_dict is None:
        state_dict = build_model(model, num_classes, **(model_options or {})).state_dict()
    run_dir = write_opts(run_dir, model, dataset, altitude, model_options=model_options, num_classes=num_classes)
    save_checkpoint({"model": state_dict, "epoch": 4}, run_dir / "last.pth")
    return run_dir


class ToyBranchNet(nn.Module):
    """(B, 3, H, W) -> (B, 4, 3): three branches that see the image differently, not flip-invariant."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.bias = nn.Parameter(torch.linspace(0.5, 1.5, 4))

    def forward(self, x):
        columns = self.conv(x).mean(2)  # (B, 12, W)
        ramp = torch.linspace(-1, 1, columns.shape[-1])
        return (columns * ramp).sum(-1).view(-1, 4, 3) + self.bias[:, None]
