"""Human-readable records of a training run: ``train.log``, ``metrics.csv`` and ``loss_curve.png``."""
import csv
import io
import logging
import logging.handlers
import sys
from pathlib import Path
from typing import Dict, List, Optional

from utils.files import atomic_write_bytes, atomic_write_text

METRICS_FILE = "metrics.csv"
LOG_FILE = "train.log"
CURVE_FILE = "loss_curve.png"


class _PrintableFormatter(logging.Formatter):
    """Escapes what no text file can hold: paths that are not UTF-8, which Python keeps as
    surrogate characters, come out as ``\\udcXX`` instead of breaking the handler."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).encode("utf-8", "backslashreplace").decode("utf-8")


_FORMAT = _PrintableFormatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
_LOGGERS = ("bicrossnet", "py.warnings")


def _handler(handler: logging.Handler) -> logging.Handler:
    handler.setFormatter(_FORMAT)
    return handler


def setup_logger(is_main: bool) -> logging.Logger:
    """Log to stdout on the main process (other ranks only warn on stderr), and hold the main
    process's records until :func:`attach_log_file` names the run's ``train.log``: the run folder
    is created only once every check has passed.

    Python warnings (such as images skipped with ``--on_bad_image skip``, raised in DataLoader
    workers, which inherit these handlers) go to the same places, so ``train.log`` keeps them.
    """
    handlers = [_handler(logging.StreamHandler(sys.stdout if is_main else sys.stderr))]
    if is_main:
        handlers.append(_handler(logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)))
    logging.captureWarnings(False)  # re-install, in case warnings.showwarning changed since an earlier run
    logging.captureWarnings(True)
    for name, level in zip(_LOGGERS, (logging.INFO if is_main else logging.WARNING, logging.WARNING)):
        target = logging.getLogger(name)
        for old in target.handlers:
            old.close()
        target.handlers = list(handlers)
        target.propagate = False
        target.setLevel(level)
    return logging.getLogger("bicrossnet")


def attach_log_file(run_dir: Path) -> None:
    """Write the held records and everything after them to ``run_dir/train.log``."""
    file_handler = _handler(logging.FileHandler(Path(run_dir) / LOG_FILE, encoding="utf-8"))
    for name in _LOGGERS:
        target = logging.getLogger(name)
        for held in [h for h in target.handlers if isinstance(h, logging.handlers.MemoryHandler)]:
            held.setTarget(file_handler)
            held.flush()
            target.removeHandler(held)
            held.buffer.clear()
        target.addHandler(file_handler)


class MetricsTable:
    """Per-epoch metrics kept in memory and rewritten atomically, so the CSV always matches the
    checkpoints.

    ``rows``: the record a resumed checkpoint carries (train.py saves it before the CSV, so a
    process killed between the two writes loses no row); the CSV is rewritten from it at once.
    Without it, rows of epochs up to ``keep_through_epoch`` are read back from the CSV and the
    rest, which will be re-run, dropped.
    """

    def __init__(self, run_dir: Path, keep_through_epoch: int = 0, rows: Optional[List[Dict]] = None):
        self.path = Path(run_dir) / METRICS_FILE
        self.rows: List[Dict[str, str]] = []
        if rows is not None:
            self.rows = [{k: _fmt(v) for k, v in row.items()} for row in rows]
            self._write()
        elif keep_through_epoch > 0 and self.path.exists():
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= keep_through_epoch]

    def append(self, row: Dict[str, float]) -> None:
        self.rows.append({k: _fmt(v) for k, v in row.items()})
        self._write()

    def _write(self) -> None:
        fields = list(dict.fromkeys(k for r in self.rows for k in r))
        out = io.StringIO()
        if fields:  # a run resumed before its first epoch ended has no rows, not even a header
            writer = csv.DictWriter(out, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)
        atomic_write_text(self.path, out.getvalue())

    def plot(self, keys=("total", "ce", "triplet", "kd")) -> None:
        """Draw the loss curves to ``loss_curve.png`` next to the CSV."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            # An epoch whose every step was skipped (non-finite loss) has no losses: leave it out.
            points = [(int(r["epoch"]), float(r[key])) for r in self.rows if r.get(key, "") != ""]
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, label=key)
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
