"""Human-readable records of a training run: ``train.log``, ``metrics.csv`` and ``loss_curve.png``."""
import csv
import io
import logging
import sys
from pathlib import Path
from typing import Dict, List

from .checkpoint import atomic_write_bytes, atomic_write_text

METRICS_FILE = "metrics.csv"
LOG_FILE = "train.log"
CURVE_FILE = "loss_curve.png"


def setup_logger(run_dir: Path, is_main: bool) -> logging.Logger:
    """Log to stdout and ``train.log`` on the main process; other ranks only warn on stderr."""
    logger = logging.getLogger("bicrossnet")
    logger.handlers.clear()
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    if is_main:
        logger.setLevel(logging.INFO)
        for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(Path(run_dir) / LOG_FILE)):
            handler.setFormatter(fmt)
            logger.addHandler(handler)
    else:
        logger.setLevel(logging.WARNING)
        logger.addHandler(logging.StreamHandler(sys.stderr))
    return logger


class MetricsTable:
    """Per-epoch metrics kept in memory and rewritten atomically, so the CSV always matches the
    checkpoints: on resume, rows from epochs that will be re-run are dropped."""

    def __init__(self, run_dir: Path, keep_through_epoch: int = 0):
        self.path = Path(run_dir) / METRICS_FILE
        self.rows: List[Dict[str, str]] = []
        if keep_through_epoch > 0 and self.path.exists():
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= keep_through_epoch]

    def append(self, row: Dict[str, float]) -> None:
        self.rows.append({k: _fmt(v) for k, v in row.items()})
        fields = list(dict.fromkeys(k for r in self.rows for k in r))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, out.getvalue())

    def plot(self, keys=("total", "ce", "triplet", "kd")) -> None:
        """Draw the loss curves to ``loss_curve.png`` next to the CSV."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [int(r["epoch"]) for r in self.rows]
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            if self.rows and key in self.rows[0]:
                ax.plot(epochs, [float(r[key]) for r in self.rows], marker="o", ms=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        atomic_write_bytes(self.path.with_name(CURVE_FILE), buffer.getvalue())


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
