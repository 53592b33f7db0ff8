"""Everyday training use: the teacher recipe's defaults, the console and log lines, TensorBoard
scalars, and data-loading workers that start once per run without costing exact resumes."""
import csv
import multiprocessing
import os
import re
import signal

import pytest
import torch
import yaml
from torch.utils.data import dataloader

import train
from training.trainer import Trainer
from training.training_log import duration, progress_enabled
from runs.checkpoints import load_checkpoint

from helpers.tiny_runs import base_args

TEACHER = ("--model", "mccg_convnext_atto")
EPOCH_LINE = re.compile(r"INFO epoch (\d+)/(\d+)  (.*)$")


def rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def epoch_lines(text):
    return [EPOCH_LINE.search(line) for line in text.splitlines() if EPOCH_LINE.search(line)]


def without_seconds(run_dir):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows(run_dir)]


def same_weights(a, b):
    a, b = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def interrupt_at(monkeypatch, epoch, batch):
    """Ctrl-C right after step ``batch`` of ``epoch`` (both 0-based), as the reliability tests do."""
    real_step = Trainer.train_step

    def step_then_ctrl_c(self, *args):
        real_step(self, *args)
        if args[-2:] == (epoch, batch):
            assert signal.getsignal(signal.SIGINT) not in (signal.default_int_handler, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    return real_step


# --------------------------------------------------------------------------- recipe defaults


def test_teacher_models_get_the_teacher_recipe_defaults_unless_flags_say_otherwise(tmp_path):
    common = ["--checkpoint_dir", str(tmp_path), "--device", "cpu"]
    args, given, applied = train.parse_command([*common, *TEACHER])
    assert (args.optimizer, args.lr, args.epochs, args.steps, args.bigradual_n1, args.bigradual_n2) == \
        ("sgd", 0.01, 200, [80, 120], 0, 0)
    assert set(applied) == {"optimizer", "lr", "epochs", "steps", "bigradual_n1", "bigradual_n2"}
    # Explicit flags win, even where they repeat the student default.
    args, given, applied = train.parse_command([*common, *TEACHER, "--optimizer", "adamlion", "--epochs", "300",
                                                "--lr", "0.003"])
    assert (args.optimizer, args.lr, args.epochs, args.steps, args.bigradual_n1) == ("adamlion", 0.003, 300,
                                                                                     [80, 120], 0)
    assert {"optimizer", "epochs", "lr", "model"} <= given and "steps" not in given
    student, _, applied = train.parse_command(common)
    assert (student.optimizer, student.lr, student.epochs, student.steps, student.bigradual_n1) == \
        ("adamlion", 0.006, 300, [80, 120, 200], 20) and applied == {}


def test_resume_of_an_old_teacher_run_keeps_its_settings_and_fills_missing_ones_from_its_recipe(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    # An opts.yaml written before recipes existed: the teacher trained with the student's lr and
    # bi-gradual epochs, and (say) before --steps was a flag.
    saved = vars(train.parse_args(["--checkpoint_dir", str(tmp_path), "--device", "cpu"]))
    saved.update(model="mccg_convnext_atto", name="old", optimizer="sgd")
    del saved["steps"]
    (run / "opts.yaml").write_text(yaml.safe_dump({"model": "mccg_convnext_atto", "model_options": {},
                                                   "num_classes": 6, "h": 256, "w": 256, "args": saved}))
    args = train.parse_args(["--name", "old", "--checkpoint_dir", str(tmp_path), "--resume"])
    assert (args.lr, args.epochs, args.bigradual_n1, args.bigradual_n2) == (0.006, 300, 20, 20)
    assert args.steps == [80, 120]


def test_help_shows_both_recipes_defaults():
    text = train.get_args_parser().format_help()
    assert "(default: 0.006; teachers, mccg_convnext_*: 0.01)" in " ".join(text.split())
    assert "--progress {auto,on,off}" in text and "(default: auto)" in text


# --------------------------------------------------------------------------- console and log


@pytest.mark.slow
def test_redirected_teacher_run_logs_one_clean_line_per_epoch(university_root, tmp_path, capsys, monkeypatch):
    """stderr is not a terminal: no progress bars; each epoch one line with the learning rate it
    used (the milestone at epoch 1 lowers epoch 2's), in %.3g form, and no binary-weight fields."""
    used = []
    real_step = Trainer.train_step

    def record_lr(self, *args):
        used.append((args[-2] + 1, max(g["lr"] for g in self.optimizers["sgd"].param_groups)))
        real_step(self, *args)

    monkeypatch.setattr(Trainer, "train_step", record_lr)
    argv = base_args(university_root, tmp_path, "teacher", *TEACHER, "--epochs", "2", "--steps", "1", "--lr",
                     "3e-5")
    assert train.main(argv) == 0
    out, err = capsys.readouterr()
    assert "\r" not in err + out
    lines = epoch_lines(out)
    assert [(m[1], m[2]) for m in lines] == [("1", "2"), ("2", "2")]
    for match in lines:
        fields = dict(field.split("=", 1) for field in match[3].split())
        assert {"phase", "ce", "triplet", "total", "train_acc", "lr_sgd", "seconds", "pairs/s", "eta"} <= set(fields)
        assert re.fullmatch(r"\d+:\d\d:\d\d", fields["eta"]) and float(fields["pairs/s"]) > 0
        assert all(len(fields[k].replace(".", "").replace("-", "").lstrip("0")) <= 3
                   for k in ("ce", "total", "train_acc") if "e" not in fields[k])
    assert [dict(field.split("=", 1) for field in m[3].split())["lr_sgd"] for m in lines] == ["3e-05", "3e-06"]
    run = tmp_path / "teacher"
    logged = {int(r["epoch"]): float(r["lr_sgd"]) for r in rows(run)}
    assert {epoch: pytest.approx(lr) for epoch, lr in used} == logged == {1: pytest.approx(3e-5), 2: pytest.approx(3e-6)}

    log = (run / "train.log").read_text()
    assert "binary_exact" not in log + str(rows(run)[0]) and "binary convolutions" not in log
    assert "binary weights included" not in log
    assert "epoch 1: bi-gradual phase 3 (all parameters; mccg_convnext_atto has no binary weights)" in log
    assert "6 classes × 1 draw = 6 training items per epoch, 2 steps of 3 pairs" in log
    assert "teacher recipe defaults for mccg_convnext_atto: --optimizer sgd --bigradual_n1 0 --bigradual_n2 0" in log
    opts = yaml.safe_load((run / "opts.yaml").read_text())
    assert opts["recipe"] == "teacher" and opts["args"]["optimizer"] == "sgd"
    assert {"lr", "steps", "epochs", "model"} <= set(opts["given_flags"]) and "optimizer" not in opts["given_flags"]


@pytest.mark.slow
def test_progress_bars_on_request(university_root, tmp_path, capsys):
    argv = base_args(university_root, tmp_path, "teacher", *TEACHER, "--epochs", "1", "--progress", "on")
    assert train.main(argv) == 0
    assert "\r" in capsys.readouterr().err


def test_progress_modes_and_durations():
    class Terminal:
        def isatty(self):
            return True

    assert progress_enabled("auto", Terminal()) and not progress_enabled("off", Terminal())
    assert progress_enabled("on", open(os.devnull, "w")) and not progress_enabled("auto", open(os.devnull, "w"))
    with pytest.raises(ValueError, match="mode"):
        progress_enabled("sometimes")
    assert duration(0) == "0:00:00" and duration(3723.4) == "1:02:03" and duration(90_061) == "1d 1:01:01"


@pytest.mark.slow
def test_student_log_numbers_epochs_from_one_everywhere(university_root, tmp_path, monkeypatch):
    """Phase changes, the interruption, the resume and the epoch lines all count epochs from 1, as
    metrics.csv does; the student's records keep its binary-weight fields."""
    argv = base_args(university_root, tmp_path, "student", "--epochs", "2", "--bigradual_n1", "1",
                     "--bigradual_n2", "1")
    real_step = interrupt_at(monkeypatch, epoch=1, batch=0)
    assert train.main(argv) == 130
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert train.main(argv + ["--resume"]) == 0
    run = tmp_path / "student"
    log = (run / "train.log").read_text()
    order = ["epoch 1: bi-gradual phase 1 (head only)", "INFO epoch 1/2  phase=1",
             "epoch 2: bi-gradual phase 3 (all parameters (binary weights included))",
             "interrupted: saved", "in epoch 2/2 after batch 1", "epoch 2/2 continues at batch 2", "INFO epoch 2/2  "]
    positions = [log.index(text) for text in order]
    assert positions == sorted(positions), log
    assert not re.search(r"epoch 0\b", log)
    assert [r["epoch"] for r in rows(run)] == ["1", "2"] and rows(run)[0]["binary_exact"].endswith("/31")
    assert "binary_exact=" in log and "31 binary convolutions" in log
    opts = yaml.safe_load((run / "opts.yaml").read_text())
    assert opts["recipe"] == "student"


# --------------------------------------------------------------------------- TensorBoard


@pytest.mark.slow
def test_tensorboard_scalars_match_metrics_csv_and_resume_appends(university_root, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    argv = base_args(university_root, tmp_path, "teacher", *TEACHER, "--epochs", "2", "--tensorboard")
    assert train.main(argv) == 0
    assert train.main(argv[:argv.index("--epochs")] + ["--epochs", "3", "--resume"]) == 0
    run = tmp_path / "teacher"
    assert (run / "loss_curve.png").exists() and len(rows(run)) == 3
    events = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/total", "loss/ce", "loss/triplet", "loss/kd", "train_acc", "lr/sgd", "phase", "seconds"} <= tags
    for column, tag in (("total", "loss/total"), ("train_acc", "train_acc"), ("lr_sgd", "lr/sgd")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3]  # the resumed session's purge leaves each epoch once
        assert [s.value for s in scalars] == pytest.approx([float(r[column]) for r in rows(run)], rel=1e-5)


# --------------------------------------------------------------------------- workers


@pytest.fixture(scope="module")
def two_worker_reference(university_root, tmp_path_factory):
    """A 3-epoch teacher run loading with 2 worker processes, and how often workers were started."""
    ckpt = tmp_path_factory.mktemp("persistent")
    starts = []
    real_init = dataloader._MultiProcessingDataLoaderIter.__init__

    def counting_init(self, loader):
        starts.append(loader.num_workers)
        real_init(self, loader)

    dataloader._MultiProcessingDataLoaderIter.__init__ = counting_init
    try:
        assert train.main(base_args(university_root, ckpt, "run", *TEACHER, "--epochs", "3", "--num_workers",
                                    "2", "--seed", "9")) == 0
    finally:
        dataloader._MultiProcessingDataLoaderIter.__init__ = real_init
    return ckpt / "run", starts


@pytest.mark.slow
def test_workers_start_once_per_run_and_end_with_it(two_worker_reference):
    _, starts = two_worker_reference
    assert starts == [2]
    assert multiprocessing.active_children() == []


@pytest.mark.slow
def test_batches_do_not_depend_on_the_number_of_workers(university_root, tmp_path, two_worker_reference):
    reference, _ = two_worker_reference
    assert train.main(base_args(university_root, tmp_path, "run", *TEACHER, "--epochs", "3", "--seed", "9")) == 0
    assert without_seconds(tmp_path / "run") == without_seconds(reference)
    assert same_weights(tmp_path / "run" / "last.pth", reference / "last.pth")


@pytest.mark.slow
def test_resume_with_persistent_workers_is_exact(university_root, tmp_path, two_worker_reference, monkeypatch):
    """Stopped in the middle of epoch 2 of 3 with 2 workers alive since epoch 1, the resumed run
    (new workers, the epoch's first batch left out) ends with the uninterrupted run's weights."""
    reference, _ = two_worker_reference
    argv = base_args(university_root, tmp_path, "run", *TEACHER, "--epochs", "3", "--num_workers", "2", "--seed",
                     "9")
    real_step = interrupt_at(monkeypatch, epoch=1, batch=0)
    assert train.main(argv) == 130
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pth")
    assert (checkpoint["epoch"], checkpoint["batches_done"]) == (1, 1)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert train.main(argv + ["--resume"]) == 0
    assert without_seconds(tmp_path / "run") == without_seconds(reference)
    assert same_weights(tmp_path / "run" / "last.pth", reference / "last.pth")
    assert multiprocessing.active_children() == []
