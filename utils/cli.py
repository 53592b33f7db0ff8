"""Command-line pieces the entry scripts share: one help layout, and the flags that mean the same
thing in every script, defined once."""
import argparse

from .device import DEVICE_CHOICES


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every flag's default in its help, and the description's example commands as written."""


def add_checkpoint_dir(parser) -> None:
    parser.add_argument("--checkpoint_dir", default="checkpoints", help="parent folder of run directories")


def add_device_flags(parser) -> None:
    """``--device`` and ``--tf32`` (``--amp`` differs by script: training also takes the original
    scripts' names for it)."""
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="auto picks CUDA when present")
    parser.add_argument("--tf32", action="store_true",
                        help="let CUDA float32 convolutions and matrix products use TF32 (default: IEEE float32)")
