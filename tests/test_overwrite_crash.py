"""--overwrite killed (SIGKILL) before the new run's first checkpoint, any number of times: the old
run is never lost, every command that meets it says where it is and how to restore it, and a start
that fails cleanly puts it back."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import train

from helpers.errors import one_line_error
from helpers.evaluation_cli import CLI, write_run

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
# train.main with Trainer.fit replaced by a SIGKILL of the process itself: the run folder is made
# and opts.yaml written, no checkpoint yet.
KILLED_IN_FIT = ("import os, signal, sys\n"
                 "import train\n"
                 "from training.trainer import Trainer\n"
                 "Trainer.fit = lambda self: os.kill(os.getpid(), signal.SIGKILL)\n"
                 "sys.exit(train.main(sys.argv[1:]))\n")


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def overwrite_args(university_root, ckpt):
    return ["--name", "run", "--checkpoint_dir", str(ckpt), "--data_dir", str(university_root / "train"), "--h", "32",
            "--w", "32", "--batchsize", "3", "--num_workers", "0", "--device", "cpu", "--epochs", "1", "--model",
            "mccg_convnext_atto", "--optimizer", "adam", "--bigradual_n1", "0", "--bigradual_n2", "0", "--overwrite"]


def killed_overwrite(university_root, ckpt):
    done = subprocess.run([sys.executable, "-c", KILLED_IN_FIT, *overwrite_args(university_root, ckpt)], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]


@pytest.mark.slow
def test_killed_overwrites_never_lose_the_old_run_and_every_command_names_it(university_root, tmp_path, capsys,
                                                                             monkeypatch):
    old = write_run(tmp_path / "run", model="mccg_convnext_atto")
    (old / "results.json").write_text("{}\n")
    before = snapshot(old)
    aside = tmp_path / ".run.replaced"
    for attempt in range(2):  # the second killed attempt must not discard what the first set aside
        killed_overwrite(university_root, tmp_path)
        assert snapshot(aside) == before, f"attempt {attempt + 1}"
        assert (tmp_path / "run" / "opts.yaml").exists() and not (tmp_path / "run" / "last.pth").exists()

    restore = f"mv {aside} {tmp_path / 'run'}"
    base = ["--name", "run", "--checkpoint_dir", tmp_path]
    for main, argv in ((CLI.main, base + ["--test_dir", university_root / "test", "--device", "cpu"]),
                       (train.main, base + ["--data_dir", university_root / "train", "--resume"]),
                       (train.main, base + ["--data_dir", university_root / "train"])):
        err = one_line_error(capsys, main, argv)
        assert str(aside) in err and restore in err, err
    assert snapshot(aside) == before

    # A start that fails cleanly (here: an unreadable image in its first step) puts the old run back.
    from training.trainer import Trainer
    from utils.errors import UserError
    monkeypatch.setattr(Trainer, "train_step", lambda self, *a: (_ for _ in ()).throw(UserError("bad image")))
    one_line_error(capsys, train.main, overwrite_args(university_root, tmp_path))
    assert snapshot(tmp_path / "run") == before and not os.path.lexists(aside)
    monkeypatch.undo()

    # A new run that reaches its first checkpoint replaces the old one for good, and resumes as any run
    # (its saved --overwrite is not taken for the resumed process's).
    killed_overwrite(university_root, tmp_path)
    assert train.main(overwrite_args(university_root, tmp_path)) == 0
    assert not os.path.lexists(aside) and (tmp_path / "run" / "last.pth").exists()
    resume = [a for a in overwrite_args(university_root, tmp_path) if a != "--overwrite"]
    assert train.main(resume[:resume.index("--epochs")] + ["--epochs", "2", "--resume"]) == 0
