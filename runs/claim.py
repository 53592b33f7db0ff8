"""Claiming a run directory for training: one writer per run, and nothing lost to a failed start.

``<checkpoint_dir>/<name>/`` is claimed through a kernel lock on ``.<folder>.lock`` beside the
folder it resolves to (so two names for one folder, such as a symbolic link, share the lock): a
second ``train.py`` on the same run is refused while the first lives, and the kernel releases
the lock of a killed process, so a stale lock never blocks.

``--overwrite`` moves the old run aside to ``.<name>.replaced`` and deletes it only once the new
run has written its first checkpoint; a start that fails before then puts the old run back, and a
new run folder with nothing in it is removed. A process killed before its first checkpoint
cannot put anything back: the old run stays in ``.<name>.replaced``, every command that finds it
says so, and the next ``--overwrite`` keeps it (discarding the killed attempt's folder instead)
until a new run has a checkpoint - however many attempts are killed.
"""
import fcntl
import os
import shutil
from pathlib import Path
from typing import Optional, Union

import yaml

from .layout import LAST_CHECKPOINT, OPTS_FILE, run_folder, set_aside_note, set_aside_path
from utils.errors import UserError
from utils.files import atomic_write_text, open_no_follow


class RunClaim:
    """The training process's hold on one run directory (see the module docstring)."""

    def __init__(self, checkpoint_dir: Union[str, Path], name: str, resume: bool, overwrite: bool):
        if resume and overwrite:
            raise UserError("--resume continues a run and --overwrite replaces it: pass only one of them")
        self.run_dir = run_folder(checkpoint_dir, name)
        self.resume, self.overwrite = resume, overwrite
        self.kept_aside: Optional[Path] = None  # the old run, while --overwrite has not committed
        self.created = False
        self.committed = resume
        self._lock_fd: Optional[int] = None
        self._check()

    def _check(self) -> None:
        run_dir, note = self.run_dir, set_aside_note(self.run_dir)
        has_run = (run_dir / OPTS_FILE).exists() or (run_dir / LAST_CHECKPOINT).exists()
        if self.resume and not (run_dir / LAST_CHECKPOINT).exists():
            hint = (" (the run stopped before its first checkpoint; start it again with --overwrite)"
                    if has_run and not note else "")
            raise UserError(f"--resume: {run_dir / LAST_CHECKPOINT} does not exist; nothing to resume{hint}{note}")
        if self.resume and not os.access(run_dir, os.W_OK | os.X_OK):
            raise UserError(f"--resume: run directory {run_dir} is not writable; fix its permissions first")
        if has_run and not (self.resume or self.overwrite):
            raise UserError(f"run directory {run_dir} already holds a run; pass --resume to continue it or "
                            f"--overwrite to replace it (or choose another --name){note}")
        if note and not (self.resume or self.overwrite):
            raise UserError(f"run directory {run_dir} holds no checkpoint{note}")

    def lock(self) -> None:
        """Become the run's only writer, or stop with one line naming the process that is."""
        try:
            self.run_dir.parent.mkdir(parents=True, exist_ok=True)
            resolved = self.run_dir.resolve()
            parent = resolved.parent
            self._lock_fd = open_no_follow(parent / f".{resolved.name}.lock", os.O_RDWR | os.O_CREAT)
        except OSError as err:
            raise UserError(f"--checkpoint_dir {self.run_dir.parent} cannot hold runs ({err.strerror or err})") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock_fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(self._lock_fd)
            self._lock_fd = None
            raise UserError(f"run {self.run_dir} is being trained by process {holder}; wait for it to finish "
                            f"or stop it first") from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)

    def create(self) -> Path:
        """Make the run folder (moving an old run aside under --overwrite); returns it."""
        if self.resume:
            return self.run_dir
        try:
            if self.overwrite:
                self._set_aside()
            self.created = not self.run_dir.exists()
            self.run_dir.mkdir(exist_ok=True)
        except OSError as err:
            self.abandon()
            raise UserError(f"cannot create run directory {self.run_dir} ({err.strerror or err})") from None
        return self.run_dir

    def _set_aside(self) -> None:
        """Move the run being replaced to ``.<name>.replaced``. Where an earlier attempt was killed
        before its first checkpoint, the run there is still the one to keep: the attempt's folder
        goes instead."""
        aside = set_aside_path(self.run_dir)
        if os.path.lexists(aside) and not (self.run_dir / LAST_CHECKPOINT).exists():
            self._remove(self.run_dir)
        elif os.path.lexists(self.run_dir):
            self._remove(aside)  # left by an attempt killed after its checkpoint: the newer run replaced it
            os.rename(self.run_dir, aside)
        if os.path.lexists(aside):
            self.kept_aside = aside

    def commit(self) -> None:
        """The new run holds a checkpoint: the run it replaced can go."""
        if not self.committed:
            self.committed = True
            self._remove(self.kept_aside)
            self.kept_aside = None

    def abandon(self) -> None:
        """A start that failed before its first checkpoint: leave things as they were before it."""
        if self.committed:
            return
        if self.created:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.kept_aside is not None and os.path.lexists(self.kept_aside):
            self._remove(self.run_dir)
            os.rename(self.kept_aside, self.run_dir)
        self.kept_aside = None

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @staticmethod
    def _remove(path: Optional[Path]) -> None:
        """Delete a run folder, or only the link when the run was a symlink to a folder elsewhere."""
        if path is None or not os.path.lexists(path):
            return
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)


def save_opts(run_dir: Path, opts: dict) -> None:
    atomic_write_text(Path(run_dir) / OPTS_FILE, yaml.safe_dump(opts, sort_keys=True))
