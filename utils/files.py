"""Reading and writing files safely: atomic writes, and torch files loaded without running code.

A training run on the real data lasts days; a process killed while writing must never leave a
half-written ``last.pth``. Every file is written to a temporary sibling ``.<name>.<random>.tmp``,
flushed to disk, then renamed over the target (``os.replace`` is atomic on POSIX), so readers see
the old file or the new one, never a mix. The folder is flushed too, so the rename itself survives
a power cut. A process killed between the write and the rename leaves only the temporary file,
which :func:`remove_temporaries` clears on the next start.
"""
import contextlib
import errno
import fcntl
import os
import pickle
import secrets
import shutil
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, List, Union

import torch

from .errors import UserError, first_line

PathLike = Union[str, os.PathLike]
TEMPORARY_GLOB = ".*.tmp"


def open_no_follow(path: PathLike, flags: int, mode: int = 0o666) -> int:
    """``os.open`` that refuses a symbolic link as the last part of ``path`` (``O_NOFOLLOW``).

    Files created, appended or locked in a run folder are opened this way: whoever can write into
    a shared checkpoint folder could otherwise plant a link there and have a run overwrite or
    append to a file of theirs choosing. A link is refused with one line naming it.
    """
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserError(f"{path} is a symbolic link; refusing to write through it (remove the link)") from None
        raise


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(file)`` on a temporary sibling of ``path``, flush it to disk, rename it over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 lets the umask decide the permissions, as for any other file the run
    # writes (tempfile.mkstemp would make checkpoints private to their owner).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_temporaries(folder: PathLike) -> List[Path]:
    """Delete the temporary files that writes killed before their rename left in ``folder``."""
    removed = sorted(Path(folder).glob(TEMPORARY_GLOB))
    for path in removed:
        path.unlink()
    return removed


def save_checkpoint(obj: Any, path: PathLike) -> None:
    """``torch.save`` made atomic: stream into the temporary file, then rename.

    Streaming (rather than serializing into memory first) keeps a BNext-L checkpoint with its
    optimizer state from briefly doubling the process's memory at every save.
    A failed write (disk full, quota, permissions) leaves the previous file untouched and is
    reported as a :class:`UserError`, since freeing space and resuming is all it takes.
    """
    try:
        atomic_write(path, lambda f: torch.save(obj, f))
    except OSError as err:
        raise UserError(f"cannot write checkpoint {path} ({err.strerror or err}); the previous file is "
                        f"intact") from None
    except RuntimeError as err:  # torch.save's zip writer reports a failed write (disk full) this way
        raise UserError(f"cannot write checkpoint {path} (the write failed part-way, e.g. disk full or a "
                        f"file-size limit: {first_line(err)}); the previous file is intact") from None


class ExecutableContentError(UserError):
    """A torch file that weights-only loading refuses: it pickles objects that could run code."""


def link_or_copy(source: PathLike, target: PathLike) -> None:
    """Give ``source`` the second name ``target`` (a hard link: no second copy on disk), replacing
    ``target`` atomically; where the file system has no hard links, write a copy instead."""
    source, target = Path(source), Path(target)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except OSError as err:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise UserError(f"cannot write {target} ({err.strerror or err}); the previous file is intact") from None
    _fsync_dir(target.parent)


def check_torch_archive(path: PathLike, what: str = "file") -> None:
    """Refuse a file that is not a zip archive of stored (uncompressed) members fitting in the file.

    ``torch.save`` never compresses, so a compressed member is foreign; refusing it before
    ``torch.load`` inflates anything bounds the memory a file can claim by its own size (a small
    file of DEFLATE members could otherwise expand to gigabytes before being refused).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; anything else is damaged or foreign
        raise UserError(f"{what} {path} is unreadable (truncated or not a PyTorch file)")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise UserError(f"{what} {path} is unreadable (truncated or not a PyTorch file): {first_line(err)}") from None
    if any(member.compress_type != zipfile.ZIP_STORED for member in members):
        raise UserError(f"{what} {path} holds compressed members, which torch.save never writes; not loaded")
    if sum(member.file_size for member in members) > path.stat().st_size:
        raise UserError(f"{what} {path} declares more data than the file holds (damaged or crafted); not loaded")


def read_torch_file(path: PathLike, what: str = "file", map_location="cpu", upgradable: bool = False) -> object:
    """``torch.load`` restricted to tensors, numbers, strings and containers (``weights_only``).

    A pickle that needs anything else could run code while it loads, whoever made the file, so
    it is refused. ``what`` names the file's role in the one-line errors ("checkpoint", ...);
    ``upgradable`` (run checkpoints only) adds how a checkpoint of an earlier version converts.
    """
    path = Path(path)
    check_torch_archive(path, what)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise UserError(f"{what} {path} is unreadable ({first_line(err)})") from None
        hint = (f"; if it is a run checkpoint of an earlier version of this project, `python -m runs.upgrade {path}` "
                f"converts it without running any code from it") if upgradable else ""
        raise ExecutableContentError(f"{what} {path} holds executable content (pickled Python objects beyond tensors, "
                                     f"numbers, strings and containers) and is not loaded{hint}") from None
    except Exception as err:  # torch raises several types for truncated or non-torch files
        raise UserError(f"{what} {path} is unreadable (truncated or not a PyTorch file): {first_line(err)}") from None


@contextlib.contextmanager
def locked(path: PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) while the block runs.

    Used around read-modify-write of a shared file, so two processes updating it at once both
    keep their changes. The kernel drops the lock when its holder dies: a killed process never
    leaves it held. A symbolic link at ``path`` is refused, not followed.
    """
    fd = open_no_follow(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
