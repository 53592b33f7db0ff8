"""train_and_evaluate_university.sh end to end on tiny synthetic data: teacher, distilled student,
evaluation in both directions; a second call reuses the finished runs; missing data stops early."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import train
from evaluation.metrics import format_metrics
from evaluation.records import latest_record
from helpers.tiny_runs import base_args

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "train_and_evaluate_university.sh"
TINY = "--h 32 --w 32 --epochs 1 --batchsize 3 --num_workers 0"


def run_script(env_overrides, *student_flags):
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "TEACHER_MODEL": "mccg_convnext_atto",
           "TEACHER_FLAGS": TINY, "EVAL_FLAGS": "--num_workers 0 --batchsize 16", "FROM_SCRATCH": "1",
           **env_overrides}
    return subprocess.run(["bash", str(SCRIPT), *student_flags], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
def test_script_trains_teacher_and_student_then_evaluates_both(university_root, tmp_path):
    env = {"DATA_DIR": str(university_root / "train"), "TEST_DIR": str(university_root / "test"),
           "CHECKPOINT_DIR": str(tmp_path)}
    result = run_script(env, *TINY.split(), "--bigradual_n1", "0", "--bigradual_n2", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    for run in ("teacher_university", "bicrossnet_university"):
        results = json.loads((tmp_path / run / "results.json").read_text())
        assert sorted(results) == [f"university/{d}/last.pth/32x32/flip/float/cpu-fp32"
                                   for d in ("Drone->Satellite", "Satellite->Drone")]
        for entry in results.values():  # what test.py printed is what it recorded
            assert format_metrics(entry) in result.stdout, (run, entry)
            assert entry["recall@1"] <= entry["recall@5"] <= entry["recall@10"], entry
    opts = (tmp_path / "bicrossnet_university" / "opts.yaml").read_text()
    assert "teacher_university" in opts and "optimizer: adamlion" in opts
    with open(tmp_path / "bicrossnet_university" / "metrics.csv") as f:
        header, row = f.read().splitlines()[:2]
    assert float(row.split(",")[header.split(",").index("kd")]) > 0

    # A second call reuses both finished runs instead of training them again.
    before = {p: p.read_bytes() for p in tmp_path.glob("*/last.pth")}
    again = run_script(env, *TINY.split(), "--bigradual_n1", "0", "--bigradual_n2", "0")
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.read_bytes() for p in tmp_path.glob("*/last.pth")} == before


def data_env(university_root, tmp_path, **extra):
    return {"DATA_DIR": str(university_root / "train"), "TEST_DIR": str(university_root / "test"),
            "CHECKPOINT_DIR": str(tmp_path / "runs"), **extra}


@pytest.mark.parametrize("extra, variable", [
    ({}, "BNEXT_WEIGHTS is not set"),
    ({"BNEXT_WEIGHTS": "/no/bnext_tiny.pth.tar"}, "BNEXT_WEIGHTS=/no/bnext_tiny.pth.tar does not exist"),
    ({"BNEXT_WEIGHTS": "BNEXT"}, "neither TEACHER_CHECKPOINT"),
    ({"BNEXT_WEIGHTS": "BNEXT", "TEACHER_CHECKPOINT": "/no/teacher.pth"}, "TEACHER_CHECKPOINT=/no/teacher.pth"),
])
def test_script_refuses_to_start_from_random_weights_unless_told(university_root, tmp_path, extra, variable):
    bnext = tmp_path / "bnext_tiny.pth.tar"
    bnext.write_bytes(b"weights")
    extra = {k: str(bnext) if v == "BNEXT" else v for k, v in extra.items()}
    result = run_script({**data_env(university_root, tmp_path), "FROM_SCRATCH": "0", **extra})
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and variable in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_script_takes_a_trained_teacher_and_a_launcher(university_root, tmp_path):
    """TEACHER_CHECKPOINT skips teacher training; LAUNCHER runs the student as 2 DDP processes (gloo)."""
    teacher = base_args(university_root, tmp_path / "own", "teacher", "--model", "mccg_convnext_atto",
                        "--optimizer", "adam", "--epochs", "1", "--bigradual_n1", "0", "--bigradual_n2", "0")
    assert train.main(teacher) == 0
    launcher = f"{sys.executable} -m torch.distributed.run --nproc_per_node=2 --master_port=29547"
    env = data_env(university_root, tmp_path, TEACHER_CHECKPOINT=str(tmp_path / "own" / "teacher"),
                   LAUNCHER=launcher, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = run_script(env, "--h", "32", "--w", "32", "--epochs", "1", "--batchsize", "2", "--num_workers", "0",
                        "--bigradual_n1", "0", "--bigradual_n2", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "given by TEACHER_CHECKPOINT" in result.stdout
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")) == \
        ["bicrossnet_university"]
    log = (tmp_path / "runs" / "bicrossnet_university" / "train.log").read_text()
    assert log.count("done:") == 1 and "teacher mccg_convnext_atto" in log


def test_script_stops_before_training_when_the_dataset_is_missing(tmp_path):
    result = run_script({"DATA_DIR": str(tmp_path / "missing" / "train"), "TEST_DIR": str(tmp_path / "missing"),
                         "CHECKPOINT_DIR": str(tmp_path / "runs")})
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "missing/train" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_script_with_three_views_trains_both_on_street_images_and_evaluates_every_direction(university_root,
                                                                                             tmp_path):
    result = run_script(data_env(university_root, tmp_path, VIEWS="3", EXTRA_GOOGLE="1"), *TINY.split(),
                        "--bigradual_n1", "0", "--bigradual_n2", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    directions = ("Satellite->Drone", "Drone->Satellite", "Street->Satellite", "Satellite->Street",
                  "Drone->Street", "Street->Drone")
    for run in ("teacher_university_3views_google", "bicrossnet_university_3views_google"):
        opts = (tmp_path / "runs" / run / "opts.yaml").read_text()
        assert "views: 3" in opts and "extra_Google: true" in opts
        results = json.loads((tmp_path / "runs" / run / "results.json").read_text())
        assert sorted(r["direction"] for r in results.values()) == sorted(directions)
    for direction in directions:  # every direction's line, for teacher and student
        assert result.stdout.count(f"University-1652 {direction}:") == 2


@pytest.mark.parametrize("script, env, message", [
    ("train_and_evaluate_sue_150.sh", {"VIEWS": "3"}, "VIEWS=3 needs street images; SUES-200 has none"),
    ("train_and_evaluate_university.sh", {"VIEWS": "4"}, "VIEWS must be 2 or 3, got '4'"),
    ("train_and_evaluate_university.sh", {"EXTRA_GOOGLE": "1"}, "EXTRA_GOOGLE=1 adds google images to the street "
                                                                 "view: set VIEWS=3"),
])
def test_script_refuses_view_settings_with_one_line(tmp_path, script, env, message):
    result = subprocess.run(["bash", str(REPO / script)], env={**os.environ, "CHECKPOINT_DIR": str(tmp_path), **env},
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {message}"


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_and_says_what_it_skipped(tmp_path):
    env = {**os.environ, "QUICK": "1", "GPU_CHECK_DIR": str(tmp_path / "gpu_check"), "CUDA_VISIBLE_DEVICES": "",
           "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no CUDA device: running on the CPU; skipped:" in result.stdout
    assert "phase 3" in (tmp_path / "gpu_check" / "checkpoints" / "student" / "train.log").read_text()
    row = next(line for line in result.stdout.splitlines() if line.startswith("| cpu | fp32 |"))
    results = json.loads((tmp_path / "gpu_check" / "checkpoints" / "student" / "results.json").read_text())
    entries = [latest_record(results, "university", d) for d in ("Satellite->Drone", "Drone->Satellite")]
    assert all(format_metrics(entry) in result.stdout for entry in entries)  # test.py printed what it recorded
    assert [cell.strip() for cell in row.strip(" |").split("|")[2:]] == \
        [f"{entry[metric]:.2f}" for entry in entries for metric in ("recall@1", "ap")]
