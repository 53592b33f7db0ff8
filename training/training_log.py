"""Human-readable records of a training run: ``train.log`` (one line per epoch), ``metrics.csv``,
``loss_curve.png`` and, on request, TensorBoard scalars."""
import csv
import io
import logging
import logging.handlers
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, TextIO

from utils.errors import UserError
from utils.files import atomic_write_bytes, atomic_write_text, open_no_follow

METRICS_FILE = "metrics.csv"
LOG_FILE = "train.log"
CURVE_FILE = "loss_curve.png"
TENSORBOARD_DIR = "tensorboard"
LOSS_KEYS = ("total", "ce", "triplet", "kd")


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


class _AppendHandler(logging.FileHandler):
    """A log file opened for appending without following a symbolic link planted in its place."""

    def _open(self):
        fd = open_no_follow(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


def attach_log_file(run_dir: Path) -> None:
    """Write the held records and everything after them to ``run_dir/train.log``."""
    file_handler = _handler(_AppendHandler(Path(run_dir) / LOG_FILE, encoding="utf-8"))
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
        if ax.lines:
            ax.legend()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        atomic_write_bytes(self.path.with_name(CURVE_FILE), buffer.getvalue())


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def progress_enabled(mode: str, stream: Optional[TextIO] = None) -> bool:
    """Whether to draw per-step progress bars: ``on``, ``off``, or ``auto`` (only on a terminal)."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"mode must be 'auto', 'on' or 'off', got {mode!r}")
    if mode != "auto":
        return mode == "on"
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def duration(seconds: float) -> str:
    """``h:mm:ss`` (``Nd h:mm:ss`` past a day) of a non-negative number of seconds."""
    total = max(int(round(seconds)), 0)
    days, rest = divmod(total, 86_400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


def epoch_line(row: Dict, epochs: int, pairs_per_s: float, eta_seconds: float) -> str:
    """The log line of a finished epoch: its metrics.csv row (floats to 3 significant digits), the
    speed in training pairs per second and the estimated time left for the whole run."""
    fields = [f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
              for key, value in row.items() if key != "epoch"]
    fields += [f"pairs/s={pairs_per_s:.3g}", f"eta={duration(eta_seconds)}"]
    return f"epoch {row['epoch']}/{epochs}  " + "  ".join(fields)


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a metrics.csv column: losses under ``loss/``, learning rates under ``lr/``."""
    if key in LOSS_KEYS:
        return f"loss/{key}"
    return f"lr/{key[3:]}" if key.startswith("lr_") else key


def row_scalars(row: Dict) -> Dict[str, float]:
    """The numeric columns of a metrics.csv row as TensorBoard scalars (``binary_exact``, "e/n",
    becomes the count e)."""
    scalars = {}
    for key, value in row.items():
        if key == "epoch" or value == "" or value is None:
            continue
        if key == "binary_exact":
            value = str(value).split("/")[0]
        try:
            scalars[scalar_tag(key)] = float(value)
        except (TypeError, ValueError):
            continue
    return scalars


class TensorBoardLog:
    """metrics.csv's columns as TensorBoard scalars under ``run_dir/tensorboard/``, one step per epoch.

    ``purge_step``: a resumed run's first epoch to write; TensorBoard drops the events an earlier
    session wrote from that step on, so the curves do not double back. Each event file's name ends
    in a random suffix, so nobody can plant a link under the name it will have; a ``tensorboard``
    folder that is itself a link is refused.
    """

    def __init__(self, run_dir: Path, purge_step: Optional[int] = None):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package; only on request

        folder = Path(run_dir) / TENSORBOARD_DIR
        if folder.is_symlink():
            raise UserError(f"{folder} is a symbolic link; refusing to write through it (remove the link)")
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step,
                                    filename_suffix=f".{secrets.token_hex(8)}")

    def add(self, row: Dict) -> None:
        for tag, value in row_scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=int(row["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class EpochRecords:
    """What a finished epoch leaves behind: a line in the log (with the speed and the run's
    remaining time), and in the main process (``write``) a row of metrics.csv, the loss curve and,
    with ``tensorboard``, the row's scalars.

    ``start_epoch`` and ``rows`` resume the records as :class:`MetricsTable` does. A resumed
    TensorBoard log rewrites its last recorded epoch (a kill may have come between the checkpoint
    and the event file) and drops what an earlier session wrote from there on; the first time it is
    asked for, it receives every recorded epoch.
    """

    def __init__(self, run_dir: Path, logger: logging.Logger, epochs: int, start_epoch: int = 0,
                 rows: Optional[List[Dict]] = None, tensorboard: bool = False, write: bool = True):
        self.logger, self.epochs = logger, epochs
        self.table = MetricsTable(run_dir, keep_through_epoch=start_epoch, rows=rows) if write else None
        self.board = None
        if write and tensorboard:
            first = start_epoch if start_epoch and (Path(run_dir) / TENSORBOARD_DIR).is_dir() else 1
            self.board = TensorBoardLog(run_dir, purge_step=first if start_epoch else None)
            for row in self.table.rows:
                if int(row["epoch"]) >= first:
                    self.board.add(row)
        self.started, self.steps_done = time.time(), 0

    def rows(self) -> List[Dict]:
        return list(self.table.rows) if self.table is not None else []

    def add(self, row: Dict, steps: int, pairs_per_step: int, steps_left: int) -> None:
        """Record ``row``, an epoch in which this process ran ``steps`` steps; ``steps_left`` is
        the number of steps the run has still to go."""
        self.steps_done += steps
        seconds_per_step = (time.time() - self.started) / max(self.steps_done, 1)
        pairs_per_s = steps * pairs_per_step / max(float(row["seconds"]), 1e-9)
        self.logger.info(epoch_line(row, self.epochs, pairs_per_s, seconds_per_step * steps_left))
        if self.table is not None:
            self.table.append(row)
            self.table.plot()
        if self.board is not None:
            self.board.add(row)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
