"""Run directories under misuse and concurrency: --overwrite keeps the old run until the new one has
a checkpoint, one writer per run, no empty folders after a failed start, hard-linked and pruned
epoch checkpoints, flag values that make no sense, a full disk, and odd file names in the log."""
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import train
from runs.claim import RunClaim
from training.trainer import Trainer
from utils.errors import UserError

from helpers.errors import assert_one_line_error, exit_code
from helpers.files import snapshot
from helpers.tiny_runs import train_args

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished(university_root, tmp_path_factory):
    """A finished two-epoch teacher run, copied by each test that changes it."""
    ckpt = tmp_path_factory.mktemp("claims")
    assert train.main(train_args(university_root / "train", ckpt, "run", "--model", "mccg_convnext_atto",
                                 "--optimizer", "adam", "--bigradual_n1", "0", "--bigradual_n2", "0")) == 0
    return ckpt / "run"


def copy_run(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


def entries(folder):
    """What a folder holds besides the run lock (a hidden, empty-when-idle file that stays)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def teacher_args(university_root, tmp_path, *extra):
    return train_args(university_root / "train", tmp_path, "run", "--model", "mccg_convnext_atto", "--optimizer",
                      "adam", "--bigradual_n1", "0", "--bigradual_n2", "0", *extra)


@pytest.mark.slow
@pytest.mark.parametrize("extra, fragment", [
    (["--data_dir", "/no/such/data"], "/no/such/data"),
    (["--h", "8", "--w", "8"], "--h 8 --w 8"),
    (["--teacher_path", "SELF"], "is the run being trained"),
    (["--gamma", "-1"], "--gamma must be a finite number > 0"),
])
def test_overwrite_that_fails_its_checks_keeps_the_old_run(finished, university_root, tmp_path, capsys, extra,
                                                           fragment):
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    extra = [str(run) if value == "SELF" else value for value in extra]  # a later flag wins in argparse
    assert exit_code(teacher_args(university_root, tmp_path, "--overwrite", *extra)) == 2
    assert_one_line_error(capsys.readouterr().err, fragment)
    assert snapshot(run) == before
    assert entries(tmp_path) == ["run"]


@pytest.mark.slow
def test_overwrite_that_fails_in_its_first_epoch_puts_the_old_run_back(finished, university_root, tmp_path,
                                                                      capsys, monkeypatch):
    run = copy_run(finished, tmp_path)
    before = snapshot(run)

    def unreadable_image(self, *args):
        raise UserError("cannot read image x.jpg")

    monkeypatch.setattr(Trainer, "train_step", unreadable_image)
    assert exit_code(teacher_args(university_root, tmp_path, "--overwrite")) == 2
    assert snapshot(run) == before
    assert entries(tmp_path) == ["run"]


@pytest.mark.slow
def test_overwrite_replaces_the_run_once_the_new_one_has_a_checkpoint(finished, university_root, tmp_path):
    run = copy_run(finished, tmp_path)
    (run / "results.json").write_text("{}")
    assert train.main(teacher_args(university_root, tmp_path, "--overwrite", "--epochs", "1")) == 0
    assert not (run / "results.json").exists() and (run / "net_001.pth").exists()
    assert entries(tmp_path) == ["run"]


@pytest.mark.slow
def test_overwrite_of_a_symlinked_run_replaces_the_link_and_spares_its_target(finished, university_root,
                                                                                tmp_path):
    target = Path(shutil.copytree(finished, tmp_path / "elsewhere"))
    before = snapshot(target)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "run").symlink_to(target)
    assert train.main(teacher_args(university_root, tmp_path / "runs", "--overwrite", "--epochs", "1")) == 0
    assert not (tmp_path / "runs" / "run").is_symlink() and (tmp_path / "runs" / "run" / "last.pth").exists()
    assert snapshot(target) == before


def test_a_failed_start_leaves_no_empty_run_folder(university_root, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "train_step", lambda self, *a: (_ for _ in ()).throw(UserError("bad image")))
    assert exit_code(teacher_args(university_root, tmp_path)) == 2
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_dead_ones_lock_does_not_block(finished, university_root, tmp_path,
                                                                       capsys):
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    holder = RunClaim(tmp_path, "run", resume=True, overwrite=False)
    holder.lock()
    try:
        assert exit_code(teacher_args(university_root, tmp_path, "--resume", "--epochs", "3")) == 2
        assert_one_line_error(capsys.readouterr().err, "is being trained by process", str(os.getpid()))
        assert snapshot(run) == before
    finally:
        holder.release()
    # A lock file left by a killed process names it, but nobody holds the lock any more.
    assert (tmp_path / ".run.lock").read_text().strip() == str(os.getpid())
    assert train.main(teacher_args(university_root, tmp_path, "--resume", "--epochs", "3")) == 0


@pytest.mark.slow
def test_epoch_checkpoints_are_hard_links_and_keep_last_prunes(university_root, tmp_path):
    assert train.main(teacher_args(university_root, tmp_path, "--epochs", "3", "--save_every", "1",
                                   "--keep_last", "2")) == 0
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("net_*.pth")) == ["net_002.pth", "net_003.pth"]
    last, newest = (run / "last.pth").stat(), (run / "net_003.pth").stat()
    assert last.st_ino == newest.st_ino and last.st_nlink == 2


@pytest.mark.parametrize("flag, value", [("--lr", "nan"), ("--lr", "inf"), ("--gamma", "0"),
                                         ("--weight_decay", "-1"), ("--erasing_p", "1.5")])
def test_values_that_make_no_sense_are_refused(university_root, tmp_path, capsys, flag, value):
    assert exit_code(teacher_args(university_root, tmp_path, flag, value)) == 2
    assert_one_line_error(capsys.readouterr().err, f"{flag} must be a finite number")
    assert not (tmp_path / "run").exists()


def test_checkpoint_dir_that_is_a_file(university_root, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert exit_code(train_args(university_root / "train", tmp_path / "file", "run")) == 2
    assert_one_line_error(capsys.readouterr().err, "--checkpoint_dir", "cannot hold runs")


def limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))


@pytest.mark.slow
def test_disk_full_inside_torch_save_is_one_line_and_keeps_the_last_checkpoint(finished, university_root,
                                                                              tmp_path):
    run = copy_run(finished, tmp_path)
    before = (run / "last.pth").read_bytes()
    argv = teacher_args(university_root, tmp_path, "--resume", "--epochs", "3")
    done = subprocess.run([sys.executable, "train.py", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300, preexec_fn=limit_file_size)
    assert done.returncode == 2, done.stderr[-2000:]
    assert_one_line_error(done.stderr, "cannot write checkpoint", "the previous file is intact")
    assert (run / "last.pth").read_bytes() == before
    assert not list(run.glob(".*.tmp"))


@pytest.mark.slow
def test_non_utf8_file_name_skipped_reaches_the_log(university_root, tmp_path):
    data = Path(shutil.copytree(university_root / "train", tmp_path / "data"))
    folder = next((data / "drone").iterdir())
    (folder / os.fsdecode(b"bad-\xff.jpg")).write_bytes(b"not an image")
    argv = train_args(data, tmp_path, "run", "--model", "mccg_convnext_atto", "--optimizer", "adam", "--epochs",
                      "1", "--sample_num", "4", "--on_bad_image", "skip", "--bigradual_n1", "0", "--bigradual_n2",
                      "0")
    done = subprocess.run([sys.executable, "train.py", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Logging error" not in done.stderr
    assert "bad-\\udcff.jpg" in (tmp_path / "run" / "train.log").read_text()
