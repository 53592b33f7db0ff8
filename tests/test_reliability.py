"""Fault injection: train.py and test.py under the accidents of multi-day runs.

Processes killed with SIGKILL in the middle of a checkpoint write, Ctrl-C and scheduler SIGTERMs
(also delivered to DataLoader workers), non-finite losses and gradients, misused flags and run
directories, damaged image folders. Every fault is injected from outside the product code: a
subprocess running ``tests/helpers/fault_runner.py`` (which patches ``os.replace`` or
``Trainer.train_step`` before calling ``train.main``), or ``monkeypatch`` in this process. Resumed
runs are compared bit for bit with uninterrupted ones, so "continues correctly" means "gives the
same weights".
"""
import csv
import errno
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import test as evaluate
import train
from training import trainer as trainer_module
from training.trainer import Trainer
from models import build_model
from models._helpers import nonfinite_entries
from runs.checkpoints import load_checkpoint
from utils.files import save_checkpoint
from runs.claim import save_opts
from helpers.errors import assert_one_line_error, exit_code
from helpers.files import snapshot
from helpers.tiny_runs import TEACHER, nan_on_calls, train_args

REPO = Path(__file__).resolve().parents[1]
# Fault injection trains and kills real runs: the whole module is slow (run by `make test`, not `make test-fast`).
pytestmark = pytest.mark.slow
# One intra-op thread everywhere: bit-exact comparisons between this process and subprocesses
# need the same float summation order, and 2 cores shared by several processes run faster so.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
STUDENT = ("--bigradual_n1", "0", "--bigradual_n2", "1")

# Runs train.main(argv) with one fault armed by the FAULT variable (see the file's docstring).
FAULT_RUNNER = REPO / "tests" / "helpers" / "fault_runner.py"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_with_fault(fault, argv, **kwargs):
    return subprocess.run([sys.executable, str(FAULT_RUNNER), *argv], cwd=REPO, env={**ENV, "FAULT": fault},
                          capture_output=True, text=True, timeout=300, **kwargs)


def metrics(run_dir):
    """metrics.csv rows without the wall-clock column."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def weights(path):
    return load_checkpoint(path)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def temporaries(folder):
    return sorted(Path(folder).glob(".*.tmp"))


@pytest.fixture(scope="module")
def teacher_reference(university_root, tmp_path_factory):
    """An uninterrupted 2-epoch teacher run (net_001.pth kept too): what faulty runs must reproduce."""
    ckpt = tmp_path_factory.mktemp("teacher_reference")
    assert train.main(train_args(university_root / "train", ckpt, "run", *TEACHER, "--save_every", "1")) == 0
    return ckpt / "run"


@pytest.fixture(scope="module")
def workers_reference(university_root, tmp_path_factory):
    """A 1-epoch teacher run loading data with 2 worker processes."""
    ckpt = tmp_path_factory.mktemp("workers_reference")
    assert train.main(train_args(university_root / "train", ckpt, "run", *TEACHER, "--num_workers", "2",
                                 "--epochs", "1")) == 0
    return ckpt / "run"


@pytest.fixture(scope="module")
def student_reference(university_root, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("student_reference")
    assert train.main(train_args(university_root / "train", ckpt, "run", *STUDENT)) == 0
    return ckpt / "run"


# --------------------------------------------------------------------------- interruption


@pytest.mark.parametrize("fault, saved_epoch", [
    ("kill_before_rename:last.pth:2", 1),  # epoch 2's checkpoint written to its temporary file, not renamed
    ("kill_after_rename:last.pth:1", 1),   # epoch 1's checkpoint in place, metrics.csv not yet written
])
def test_sigkill_during_checkpoint_write_leaves_a_resumable_run(university_root, tmp_path, teacher_reference,
                                                                 fault, saved_epoch):
    argv = train_args(university_root / "train", tmp_path, "run", *TEACHER, "--save_every", "1")
    killed = run_with_fault(fault, argv)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = tmp_path / "run"
    checkpoint = load_checkpoint(run / "last.pth")
    assert checkpoint["epoch"] == saved_epoch and checkpoint["batches_done"] == 0
    assert yaml.safe_load((run / "opts.yaml").read_text())["num_classes"] == 6
    # metrics.csv is never ahead of the checkpoint (and may lag it by the epoch being saved).
    rows = metrics(run) if (run / "metrics.csv").exists() else []
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1)) and len(rows) <= saved_epoch
    if fault.startswith("kill_before"):
        assert temporaries(run) and temporaries(run)[0].name.startswith(".last.pth.")
    # The killed run can be evaluated as it is.
    assert evaluate.main(["--name", "run", "--checkpoint_dir", str(tmp_path), "--test_dir",
                          str(university_root / "test"), "--num_workers", "0", "--mode", "1"]) == 0

    assert train.main(argv + ["--resume"]) == 0
    assert temporaries(run) == []
    if fault.startswith("kill_before"):
        assert "left by a write that was killed" in (run / "train.log").read_text()
    assert metrics(run) == metrics(teacher_reference)
    for name in ("last.pth", "net_001.pth", "net_002.pth"):
        assert_same_weights(weights(run / name), weights(teacher_reference / name))


def test_sigint_mid_epoch_saves_and_resume_is_exact(university_root, tmp_path, student_reference, monkeypatch):
    """Ctrl-C during epoch 2 of the student (Adam + Lion both active): the run saves after the step
    it was in, exits 130, and --resume replays the rest of the epoch exactly."""
    real_step = Trainer.train_step

    def step_then_ctrl_c(self, *args):
        real_step(self, *args)
        if args[-2:] == (1, 0):
            # Raising KeyboardInterrupt inside pytest would end the session: check the handler first.
            assert signal.getsignal(signal.SIGINT) not in (signal.default_int_handler, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    argv = train_args(university_root / "train", tmp_path, "run", *STUDENT)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest was started in the background
    assert train.main(argv) == 130
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    run = tmp_path / "run"
    checkpoint = load_checkpoint(run / "last.pth")
    assert (checkpoint["epoch"], checkpoint["batches_done"]) == (1, 1)
    assert len(metrics(run)) == 1 and not (run / "net_002.pth").exists()

    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert train.main(argv + ["--resume"]) == 0
    assert "resumed from" in (run / "train.log").read_text()
    assert metrics(run) == metrics(student_reference)
    assert_same_weights(weights(run / "last.pth"), weights(student_reference / "last.pth"))


@pytest.mark.parametrize("signame, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_to_process_group_with_workers_saves_and_resume_is_exact(university_root, tmp_path, workers_reference,
                                                                        signame, code):
    """A terminal's Ctrl-C or a scheduler's SIGTERM reaches the DataLoader workers too; none may die
    on it, and with --num_workers 2 the resumed run must still equal the uninterrupted one (every
    item's draws are seeded from (seed, epoch, index), so the resumed loader starts at the next
    batch and loads it as the uninterrupted run did)."""
    argv = train_args(university_root / "train", tmp_path, "run", *TEACHER, "--num_workers", "2", "--epochs", "1")
    stopped = run_with_fault(f"signal_group:{signame}:0:0", argv, start_new_session=True)
    assert stopped.returncode == code, stopped.stderr[-3000:]
    assert "DataLoader worker" not in stopped.stderr
    run = tmp_path / "run"
    checkpoint = load_checkpoint(run / "last.pth")
    assert (checkpoint["epoch"], checkpoint["batches_done"]) == (0, 1)
    assert train.main(argv + ["--resume"]) == 0
    assert metrics(run) == metrics(workers_reference)
    assert_same_weights(weights(run / "last.pth"), weights(workers_reference / "last.pth"))


def test_signal_on_one_ddp_rank_stops_every_rank_after_the_same_step(university_root, tmp_path):
    """Under torchrun a signal reaching one process must stop all of them together; otherwise the
    others block in the next gradient all-reduce."""
    argv = train_args(university_root / "train", tmp_path, "run", *TEACHER, "--batchsize", "2", "--epochs", "1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541",
           str(FAULT_RUNNER), *argv]
    done = subprocess.run(cmd, cwd=REPO, env={**ENV, "FAULT": "signal_rank:SIGTERM:0:0:1"}, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode != 0  # torchrun reports the stopped ranks' exit codes as a failure
    # 6 classes / (2 ranks x 2 per batch) = 1 step per epoch: rank 0 saved right after it, mid-epoch.
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pth")
    assert (checkpoint["epoch"], checkpoint["batches_done"]) == (0, 1), done.stderr[-3000:]
    assert "interrupted: saved" in (tmp_path / "run" / "train.log").read_text()


def test_failed_checkpoint_write_keeps_the_previous_one(university_root, tmp_path, teacher_reference, monkeypatch,
                                                        capsys):
    """Disk full while saving: one clear line, the previous checkpoint intact, --resume finishes the run."""
    real_replace = os.replace

    def disk_full(src, dst):
        if Path(dst).name == "net_002.pth":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    argv = train_args(university_root / "train", tmp_path, "run", *TEACHER, "--save_every", "1")
    monkeypatch.setattr(os, "replace", disk_full)
    assert exit_code(argv) == 2
    assert_one_line_error(capsys.readouterr().err, "net_002.pth", "No space left on device", "intact")
    run = tmp_path / "run"
    assert load_checkpoint(run / "last.pth")["epoch"] == 1 and temporaries(run) == []
    monkeypatch.setattr(os, "replace", real_replace)
    assert train.main(argv + ["--resume"]) == 0
    assert_same_weights(weights(run / "last.pth"), weights(teacher_reference / "last.pth"))


def test_checkpoint_files_follow_the_umask(university_root, tmp_path):
    old = os.umask(0o022)
    try:
        assert train.main(train_args(university_root / "train", tmp_path, "run", *TEACHER, "--epochs", "1")) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
    assert set(modes.values()) == {0o644}, modes  # readable by collaborators, as train.log always was


# --------------------------------------------------------------------------- numerical faults


def test_nonfinite_steps_are_skipped_without_touching_weights_or_buffers(university_root, tmp_path, monkeypatch):
    """Epoch 2 has a NaN loss at both of its steps, epoch 3 NaN gradients at its second: those steps
    change nothing (BatchNorm running statistics included) and the run goes on."""
    nan_on_calls(monkeypatch, loss_calls={2, 3}, gradient_calls={5})
    run = tmp_path / "run"
    assert train.main(train_args(university_root / "train", tmp_path, "run", *TEACHER, "--epochs", "3",
                                 "--save_every", "1", "--max_bad_steps", "3")) == 0
    assert_same_weights(weights(run / "net_002.pth"), weights(run / "net_001.pth"))
    last, before = weights(run / "last.pth"), weights(run / "net_002.pth")
    assert nonfinite_entries(last) == [] and not all(torch.equal(last[k], before[k]) for k in last)
    rows = metrics(run)
    assert [r["skipped_steps"] for r in rows] == ["0", "2", "1"]
    assert rows[1]["total"] == "" and all(np.isfinite(float(rows[i]["total"])) for i in (0, 2))
    log = (run / "train.log").read_text()
    assert log.count("non-finite loss") == 2 and log.count("non-finite gradients") == 1
    assert (run / "loss_curve.png").stat().st_size > 0


def test_consecutive_nonfinite_steps_stop_the_run_and_keep_the_last_good_checkpoint(university_root, tmp_path,
                                                                                    teacher_reference, monkeypatch,
                                                                                    capsys):
    nan_on_calls(monkeypatch, set(range(2, 100)))  # epoch 1 trains normally, then every loss is NaN
    argv = train_args(university_root / "train", tmp_path, "run", *TEACHER, "--save_every", "1", "--max_bad_steps", "2")
    assert exit_code(argv) == 2
    assert_one_line_error(capsys.readouterr().err, "training diverged", "2 consecutive", "last.pth")
    run = tmp_path / "run"
    assert load_checkpoint(run / "last.pth")["epoch"] == 1 and not (run / "net_002.pth").exists()
    assert_same_weights(weights(run / "last.pth"), weights(teacher_reference / "net_001.pth"))
    assert len(metrics(run)) == 1


def test_nonfinite_weights_are_never_written(university_root, tmp_path, monkeypatch, capsys):
    """Should weights turn non-finite anyway (say an optimizer overflow), the checkpoint is not overwritten."""
    real_constraints, steps = trainer_module.apply_constraints_, [0]

    def overflow_on_last_step(model):
        real_constraints(model)
        steps[0] += 1
        if steps[0] == 5:  # called once after the model is built, then after each of the 2 x 2 steps
            next(model.parameters()).data.fill_(float("inf"))

    monkeypatch.setattr(trainer_module, "apply_constraints_", overflow_on_last_step)
    assert exit_code(train_args(university_root / "train", tmp_path, "run", *TEACHER)) == 2
    assert_one_line_error(capsys.readouterr().err, "NaN or infinite", "backbone", "not overwriting")
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pth")
    assert checkpoint["epoch"] == 1 and nonfinite_entries(checkpoint["model"]) == []


# --------------------------------------------------------------------------- misuse


def test_existing_run_is_left_byte_identical_without_resume_or_overwrite(university_root, tmp_path, teacher_reference,
                                                                          capsys):
    shutil.copytree(teacher_reference, tmp_path / "run")
    before = snapshot(tmp_path / "run")
    assert exit_code(train_args(university_root / "train", tmp_path, "run", *TEACHER)) == 2
    assert_one_line_error(capsys.readouterr().err, tmp_path / "run", "--resume", "--overwrite")
    assert snapshot(tmp_path / "run") == before
    # --name may not point outside --checkpoint_dir, where --overwrite would delete other folders.
    assert exit_code(train_args(university_root / "train", tmp_path / "run", "..", *TEACHER, "--overwrite")) == 2
    assert_one_line_error(capsys.readouterr().err, "--name '..'")
    assert snapshot(tmp_path / "run") == before
    assert train.main(train_args(university_root / "train", tmp_path, "run", *TEACHER, "--epochs", "1",
                                 "--overwrite")) == 0
    assert not (tmp_path / "run" / "net_002.pth").exists() and len(metrics(tmp_path / "run")) == 1


@pytest.mark.parametrize("change, fragments", [
    ("fewer_classes", ["trained with 6 classes", "has 5"]),
    ("--h 64", ["--h 64 (run: 32)", "drop them"]),
    ("--model bicrossnet_bnext_tiny", ["--model 'bicrossnet_bnext_tiny' (run: 'mccg_convnext_atto')"]),
])
def test_resume_with_conflicting_data_or_flags_is_refused(university_root, tmp_path, teacher_reference, capsys,
                                                          change, fragments):
    shutil.copytree(teacher_reference, tmp_path / "run")
    before = snapshot(tmp_path / "run")
    data = university_root / "train"
    extra = change.split()
    if change == "fewer_classes":
        data = shutil.copytree(data, tmp_path / "train")
        for view in ("satellite", "drone"):
            shutil.rmtree(data / view / sorted(os.listdir(data / view))[-1])
        extra = []
    assert exit_code(train_args(data, tmp_path, "run", "--resume", "--epochs", "3", *extra)) == 2
    assert_one_line_error(capsys.readouterr().err, *fragments)
    assert snapshot(tmp_path / "run") == before


def test_unreadable_last_checkpoint(university_root, tmp_path, teacher_reference, capsys):
    """A damaged last.pth (a bad copy, a full disk outside train.py): test.py and --resume say so in
    one line; --resume points at the epoch checkpoints it can use instead."""
    run = shutil.copytree(teacher_reference, tmp_path / "run")
    data = (run / "last.pth").read_bytes()
    (run / "last.pth").write_bytes(data[: len(data) // 3])
    test_argv = ["--name", "run", "--checkpoint_dir", str(tmp_path), "--test_dir", str(university_root / "test"),
                 "--num_workers", "0"]
    assert exit_code(test_argv, evaluate.main) == 2
    assert_one_line_error(capsys.readouterr().err, run / "last.pth", "truncated")
    argv = train_args(university_root / "train", tmp_path, "run", "--resume", "--epochs", "3")
    assert exit_code(argv) == 2
    assert_one_line_error(capsys.readouterr().err, "truncated", "net_001.pth, net_002.pth")
    (run / "last.pth").unlink()
    assert exit_code(test_argv, evaluate.main) == 2
    assert_one_line_error(capsys.readouterr().err, run / "last.pth", "does not exist", "net_001.pth, net_002.pth")
    shutil.copy(run / "net_002.pth", run / "last.pth")
    assert train.main(argv) == 0
    assert [int(r["epoch"]) for r in metrics(run)] == [1, 2, 3]


def test_test_py_reports_a_checkpoint_of_another_class_count(university_root, tmp_path, teacher_reference, capsys):
    run = shutil.copytree(teacher_reference, tmp_path / "run")
    opts = yaml.safe_load((run / "opts.yaml").read_text())
    save_opts(run, dict(opts, num_classes=5))
    assert exit_code(["--name", "run", "--checkpoint_dir", str(tmp_path), "--test_dir", str(university_root / "test"),
                      "--num_workers", "0"], evaluate.main) == 2
    assert_one_line_error(capsys.readouterr().err, "trained with 6 classes", "opts.yaml says 5")


def test_test_py_accepts_another_input_size(university_root, tmp_path, teacher_reference):
    """Both networks are fully convolutional with global pooling: a run trained at 32x32 evaluates at 64x48."""
    run = shutil.copytree(teacher_reference, tmp_path / "run")
    assert evaluate.main(["--name", "run", "--checkpoint_dir", str(tmp_path), "--test_dir",
                          str(university_root / "test"), "--num_workers", "0", "--h", "64", "--w", "48"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert {(r["h"], r["w"]) for r in results.values()} == {(64, 48)}


@pytest.mark.parametrize("size, fragment", [(["--h", "16", "--w", "16"], "--h 16 --w 16"), (["--h", "0"], "--h")])
def test_test_py_refuses_an_input_size_the_model_cannot_take(university_root, tmp_path, teacher_reference, capsys,
                                                             size, fragment):
    shutil.copytree(teacher_reference, tmp_path / "run")
    with pytest.raises(SystemExit) as done:
        evaluate.main(["--name", "run", "--checkpoint_dir", str(tmp_path), "--test_dir", str(university_root / "test"),
                       "--num_workers", "0", *size])
    assert done.value.code == 2
    assert_one_line_error(capsys.readouterr().err, fragment)


def test_train_py_refuses_an_input_size_the_model_cannot_take(university_root, tmp_path, capsys):
    assert exit_code(train_args(university_root / "train", tmp_path, "run", "--h", "40")) == 2
    assert_one_line_error(capsys.readouterr().err, "--h 40 --w 32", "bicrossnet_bnext_tiny", "multiples of 32")
    assert not (tmp_path / "run" / "opts.yaml").exists()  # the name stays free for a corrected command


def test_teacher_of_another_class_count_is_refused(university_root, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    save_opts(teacher, {"model": "mccg_convnext_atto", "model_options": {}, "num_classes": 5, "h": 32, "w": 32})
    save_checkpoint({"model": build_model("mccg_convnext_atto", 5).state_dict()}, teacher / "last.pth")
    assert exit_code(train_args(university_root / "train", tmp_path, "student", "--teacher_path", str(teacher))) == 2
    assert_one_line_error(capsys.readouterr().err, "the teacher has 5 classes", "the training set has 6")


# --------------------------------------------------------------------------- data faults


def encoded(fmt):
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(out, fmt)
    return out.getvalue()


def replaced_by(data: bytes):
    def bad(path):
        path.write_bytes(data)
        return path
    return bad


def dangling_symlink(path):
    path.unlink()
    path.symlink_to(path.parent / "deleted.jpeg")
    return path


def truncated_png(path):
    path.unlink()
    png = path.with_suffix(".png")
    png.write_bytes(encoded("PNG")[:400])
    return png


# Ways an image file goes bad; each replaces the image at ``path`` and returns the bad file's path.
BAD_FILES = {
    "zero_byte": replaced_by(b""),
    "truncated_jpeg": replaced_by(encoded("JPEG")[:700]),
    "truncated_png": truncated_png,
    "text_named_jpeg": replaced_by(b"not an image\n"),
    "dangling_symlink": dangling_symlink,
}


def damage(folder, kind, keep=0):
    """Replace all images of ``folder`` but the first ``keep`` by bad files of ``kind``; return those."""
    return [BAD_FILES[kind](path) for path in sorted(folder.iterdir())[keep:]]


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_image_stops_training_with_one_line_naming_it(university_root, tmp_path, capfd, kind):
    data = shutil.copytree(university_root / "train", tmp_path / "train")
    bad = damage(sorted((data / "drone").iterdir())[3], kind)
    argv = train_args(data, tmp_path, "run", *TEACHER, "--num_workers", "2", "--epochs", "1")
    assert exit_code(argv) == 2
    assert multiprocessing.active_children() == []  # the workers are shut down, not left to the garbage collector
    err = capfd.readouterr().err
    assert "DataLoader worker" not in err, err[-3000:]
    assert_one_line_error(err, "cannot read image")
    assert any(str(path) in err for path in bad), err


def test_skip_mode_trains_around_bad_files(university_root, tmp_path, capfd):
    data = shutil.copytree(university_root / "train", tmp_path / "train")
    bad = []
    for folder, kind in zip(sorted((data / "drone").iterdir())[:5], sorted(BAD_FILES)):
        bad += damage(folder, kind, keep=1)
    argv = train_args(data, tmp_path, "run", *TEACHER, "--num_workers", "2", "--on_bad_image", "skip")
    assert train.main(argv) == 0
    log = (tmp_path / "run" / "train.log").read_text()  # warnings from the workers are kept in the log
    skipped = [line for line in log.splitlines() if "skipping: cannot read image" in line]
    assert skipped and all(any(str(path) in line for path in bad) for line in skipped), log[-3000:]
    assert all(np.isfinite(float(r["total"])) for r in metrics(tmp_path / "run"))

    unreadable = sorted((data / "drone").iterdir())[5]  # a class with no readable drone image left
    damage(unreadable, "zero_byte")
    assert exit_code(argv + ["--overwrite"]) == 2
    assert_one_line_error(capfd.readouterr().err, "no readable image", unreadable)


def palette_with_transparency(rgb):
    image = rgb.quantize(16)
    image.info["transparency"] = 0
    return image


def test_unusual_but_valid_folders_train_in_error_mode(university_root, tmp_path, capfd):
    """Grayscale, 16-bit, RGBA, palette-with-transparency, CMYK and 1-bit images are converted to RGB;
    stray non-image files are ignored; symlinked class folders and views are followed."""
    data = shutil.copytree(university_root / "train", tmp_path / "train")
    conversions = [  # one per class: (convert an RGB image, file suffix)
        (lambda rgb: rgb.convert("L"), ".jpeg"),
        (lambda rgb: Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257), ".png"),  # 16-bit
        (lambda rgb: rgb.convert("RGBA"), ".png"),
        (palette_with_transparency, ".png"),
        (lambda rgb: rgb.convert("CMYK"), ".jpeg"),
        (lambda rgb: rgb.convert("1"), ".png"),
    ]
    classes = sorted(os.listdir(data / "drone"))
    for view in ("drone", "satellite"):
        for name, (convert, suffix) in zip(classes, conversions):
            for path in sorted((data / view / name).iterdir()):
                image = convert(Image.open(path).convert("RGB"))
                path.unlink()
                image.save(path.with_suffix(suffix))
            (data / view / name / "notes.txt").write_text("survey notes\n")
            (data / view / name / ".DS_Store").write_bytes(b"\0\1")
            (data / view / name / "thumbs.jpg").mkdir()
    elsewhere = tmp_path / "elsewhere"
    shutil.move(data / "drone" / classes[2], elsewhere)
    (data / "drone" / classes[2]).symlink_to(elsewhere, target_is_directory=True)
    shutil.move(data / "satellite", tmp_path / "satellite_store")
    (data / "satellite").symlink_to(tmp_path / "satellite_store", target_is_directory=True)

    argv = train_args(data, tmp_path, "run", *TEACHER, "--num_workers", "2", "--epochs", "1")
    assert train.main(argv) == 0
    err = capfd.readouterr().err
    assert "skipping" not in err and "Traceback" not in err, err[-3000:]
    assert np.isfinite(float(metrics(tmp_path / "run")[0]["total"]))


def test_test_py_bad_gallery_image(university_root, tmp_path, teacher_reference, capfd):
    """test.py: --on_bad_image error names the file in one line; skip leaves it out of the gallery."""
    shutil.copytree(teacher_reference, tmp_path / "run")
    test_dir = shutil.copytree(university_root / "test", tmp_path / "test")
    bad = sorted((test_dir / "gallery_drone").rglob("*.jpeg"))[0]
    BAD_FILES["truncated_jpeg"](bad)
    argv = ["--name", "run", "--checkpoint_dir", str(tmp_path), "--test_dir", str(test_dir), "--num_workers", "2",
            "--mode", "1"]
    assert exit_code(argv, evaluate.main) == 2
    assert_one_line_error(capfd.readouterr().err, bad)
    with pytest.warns(UserWarning, match=f"skipping: cannot read image {re.escape(str(bad))}"):
        assert evaluate.main(argv + ["--on_bad_image", "skip"]) == 0
    result, = json.loads((tmp_path / "run" / "results.json").read_text()).values()
    assert result["num_gallery"] == len(list((test_dir / "gallery_drone").rglob("*.jpeg"))) - 1


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_runs_and_evaluations(university_root, tmp_path, student_reference):
    assert train.main(train_args(university_root / "train", tmp_path, "run", *STUDENT)) == 0
    run = tmp_path / "run"
    assert metrics(run) == metrics(student_reference)
    for name in ("last.pth", "net_002.pth"):
        assert_same_weights(weights(run / name), weights(student_reference / name))
    for folder in (run, student_reference):
        assert evaluate.main(["--name", folder.name, "--checkpoint_dir", str(folder.parent), "--test_dir",
                              str(university_root / "test"), "--num_workers", "0"]) == 0
    assert len(json.loads((run / "results.json").read_text())) == 2

    def results(folder):  # every field but the time of the evaluation
        return {key: {k: v for k, v in record.items() if k != "time"}
                for key, record in json.loads((folder / "results.json").read_text()).items()}

    assert results(run) == results(student_reference)
