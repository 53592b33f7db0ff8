"""Checks aimed at one-line bugs the rest of the suite let through: the ordinary AMP step, a results
write failing part-way, the order of the atomic writer's flushes, the loss-scaler state and the
consecutive-bad-steps count across --resume, 16-bit grey images; and two concurrency checks made
deterministic, so a missing or shared lock fails them every time."""
import csv
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
from datasets.folders import to_rgb
from evaluation import records
from evaluation.records import load_results, record_result
from optim.stepping import step_optimizers
from runs.checkpoints import load_checkpoint
from training import trainer as trainer_module
from utils import files

from helpers.errors import exit_code
from helpers.evaluation_cli import write_run
from helpers.tiny_runs import TEACHER, nan_on_calls, train_args

REPO = Path(__file__).resolve().parents[1]
RECORD = {"dataset": "university", "direction": "Drone->Satellite", "checkpoint": "last.pth", "h": 1, "w": 1,
          "flip": True, "engine": "float", "device": "cpu", "precision": "fp32"}


def test_a_good_step_that_leaves_the_scale_unchanged_counts_as_applied():
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)  # grows only after 2000 good steps
    for _ in range(3):
        optimizer.zero_grad()
        scaler.scale(weight.sum()).backward()
        assert step_optimizers([optimizer], scaler)
    assert scaler.get_scale() == 2.0 ** 8
    assert torch.allclose(weight.detach(), torch.full((3,), 1 - 3 * 0.1))


def test_results_write_failing_part_way_leaves_the_previous_file(tmp_path):
    path = tmp_path / "results.json"
    record_result(path, RECORD)
    before = path.read_bytes()
    # A file-size limit below the new file's size: the write fails part-way (EFBIG; SIGXFSZ ignored).
    code = ("import resource, signal, sys\n"
            "from evaluation.records import record_result\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) + 100}, resource.RLIM_INFINITY))\n"
            "try:\n"
            "    record_result(sys.argv[1], dict(" + repr(RECORD) + ", direction='x' * 5000))\n"
            "except OSError as err:\n"
            "    print('failed:', err.errno)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and done.stdout.startswith("failed:"), (done.stdout, done.stderr)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".results.json.lock", "results.json"]


def test_atomic_write_flushes_the_file_then_renames_then_flushes_the_folder(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    target = tmp_path / "metrics.csv"
    files.atomic_write_text(target, "epoch\n1\n")
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"], events
    temporary = events[1][1]
    assert events[0][1] == temporary and Path(temporary).name.endswith(".tmp")
    assert events[1][2] == str(target) and events[2][1] == str(tmp_path)


def metrics_column(run: Path, key: str):
    with open(run / "metrics.csv", newline="") as f:
        return [row[key] for row in csv.DictReader(f)]


@pytest.mark.slow
def test_resume_restores_the_loss_scaler_state(university_root, tmp_path, monkeypatch):
    # Scale 3 growing by 1.5 every 3 good steps: after 4 steps (2 epochs of 2) it is 4.5 with one step
    # counted towards the next growth; a scaler restarted on resume would hold 3 with two counted.
    monkeypatch.setattr(trainer_module, "grad_scaler", lambda device, enabled: torch.amp.GradScaler(
        "cpu", init_scale=3.0, growth_factor=1.5, growth_interval=3))
    data = university_root / "train"
    assert train.main(train_args(data, tmp_path, "full", *TEACHER)) == 0
    assert train.main(train_args(data, tmp_path, "split", *TEACHER, "--epochs", "1")) == 0
    assert train.main(train_args(data, tmp_path, "split", "--epochs", "2", "--resume")) == 0
    full = load_checkpoint(tmp_path / "full" / "last.pth")["scaler"]
    split = load_checkpoint(tmp_path / "split" / "last.pth")["scaler"]
    assert full["scale"] == 4.5 and full["_growth_tracker"] == 1
    assert split == full
    assert metrics_column(tmp_path / "split", "loss_scale") == metrics_column(tmp_path / "full", "loss_scale")


@pytest.mark.slow
def test_consecutive_bad_steps_count_across_a_resume(university_root, tmp_path, monkeypatch, capsys):
    data = university_root / "train"
    nan_on_calls(monkeypatch, loss_calls={1})  # the last of epoch 1's two steps
    assert train.main(train_args(data, tmp_path, "run", *TEACHER, "--epochs", "1", "--max_bad_steps", "2")) == 0
    assert load_checkpoint(tmp_path / "run" / "last.pth")["bad_steps"] == 1
    nan_on_calls(monkeypatch, loss_calls={0})  # the first step after the resume
    assert exit_code(train_args(data, tmp_path, "run", "--epochs", "2", "--resume")) == 2
    assert "2 consecutive" in capsys.readouterr().err


def test_16_bit_grey_divides_by_257():
    # 25828 / 257 = 100.50 -> 100, while 25828 / 256 = 100.89 would round to 101.
    values = np.array([[0, 25828], [65535, 257 * 37]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    assert np.asarray(to_rgb(image))[..., 0].tolist() == [[0, 100], [255, 37]]


# --------------------------------------------------------------------------- deterministic concurrency


def _record_after_barrier(path, barrier, name):
    """Record once, all writers reading the file at the same moment: each reads after the barrier,
    then waits before writing, so writers that are not serialized by the lock lose updates."""
    real_load = records.load_results

    def slow_load(p):
        results = real_load(p)
        import time
        time.sleep(0.3)
        return results

    records.load_results = slow_load
    barrier.wait(30)
    record_result(path, dict(RECORD, direction=name))


def test_concurrent_records_all_survive_even_when_every_writer_reads_at_once(tmp_path):
    path = tmp_path / "results.json"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(3)
    workers = [context.Process(target=_record_after_barrier, args=(path, barrier, name)) for name in "abc"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert sorted(r["direction"] for r in load_results(path).values()) == ["a", "b", "c"]


def test_two_writers_of_one_run_are_serialized_even_when_they_start_together(tmp_path):
    """Two processes claim one run folder at the same moment: exactly one gets it, every time."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pth").write_bytes(b"x")
    code = ("import sys, time\n"
            "from runs.claim import RunClaim\n"
            "from utils.errors import UserError\n"
            "claim = RunClaim(sys.argv[1], 'run', resume=True, overwrite=False)\n"
            "start = float(sys.argv[2])\n"
            "time.sleep(max(0.0, start - time.time()))\n"
            "try:\n"
            "    claim.lock()\n"
            "except UserError:\n"
            "    print('refused', flush=True)\n"
            "    sys.exit(0)\n"
            "print('claimed', flush=True)\n"
            "time.sleep(2)\n")
    import time
    start = str(time.time() + 3)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), start], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
             for _ in range(2)]
    outputs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outputs == ["claimed", "refused"]


# test.py with the results lock's critical section widened: each process waits until both are about
# to record, then reads the file, waits 0.5 s and writes, so unserialized writers lose a direction.
RACING_TEST_PY = """
import pathlib, runpy, sys, time
from evaluation import driver, records
meeting, argv = pathlib.Path(sys.argv[1]), sys.argv[2:]
real_record, real_load = records.record_result, records.load_results

def slow_load(path):
    results = real_load(path)
    time.sleep(0.5)
    return results

def record(path, record):
    (meeting / ('ready-' + record['direction'].replace('>', ''))).touch()
    deadline = time.time() + 120
    while len(list(meeting.glob('ready-*'))) < 2 and time.time() < deadline:
        time.sleep(0.02)
    records.load_results = slow_load
    return real_record(path, record)

driver.record_result = record
sys.argv = ['test.py', *argv]
runpy.run_path('test.py', run_name='__main__')
"""


def test_two_test_py_processes_recording_at_the_same_moment_keep_both_directions(tmp_path, university_root):
    run = write_run(tmp_path / "checkpoints" / "run", model="mccg_convnext_atto")
    common = ["--name", "run", "--checkpoint_dir", str(run.parent), "--test_dir", str(university_root / "test"),
              "--device", "cpu", "--num_workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", RACING_TEST_PY, str(tmp_path), *common, "--mode", mode],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for mode in ("1", "2")]
    assert [p.wait(300) for p in procs] == [0, 0], [p.stderr.read()[-2000:] for p in procs]
    assert len(list(tmp_path.glob("ready-*"))) == 2
    assert sorted(r["direction"] for r in load_results(run / "results.json").values()) == \
        ["Drone->Satellite", "Satellite->Drone"]
