"""train_and_evaluate_university.sh end to end on tiny synthetic data: teacher, distilled student,
evaluation in both directions; a second call reuses the finished runs; missing data stops early."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "train_and_evaluate_university.sh"
TINY = "--h 32 --w 32 --epochs 1 --batchsize 3 --num_workers 0"


def run_script(env_overrides, *student_flags):
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "TEACHER_MODEL": "mccg_convnext_atto",
           "TEACHER_FLAGS": TINY, "EVAL_FLAGS": "--num_workers 0 --batchsize 16", **env_overrides}
    return subprocess.run(["bash", str(SCRIPT), *student_flags], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=900)


def test_script_trains_teacher_and_student_then_evaluates_both(university_root, tmp_path):
    env = {"DATA_DIR": str(university_root / "train"), "TEST_DIR": str(university_root / "test"),
           "CHECKPOINT_DIR": str(tmp_path)}
    result = run_script(env, *TINY.split(), "--bigradual_n1", "0", "--bigradual_n2", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    for run in ("teacher_university", "bicrossnet_university"):
        results = json.loads((tmp_path / run / "results.json").read_text())
        assert sorted(results) == [f"university/{d}/last.pth/32x32/flip/float/cpu-fp32"
                                   for d in ("Drone->Satellite", "Satellite->Drone")]
        for entry in results.values():
            for metric in ("recall@1", "recall@5", "recall@10", "recall@top1", "ap"):
                assert 0.0 <= entry[metric] <= 100.0
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


def test_script_stops_before_training_when_the_dataset_is_missing(tmp_path):
    result = run_script({"DATA_DIR": str(tmp_path / "missing" / "train"), "TEST_DIR": str(tmp_path / "missing"),
                         "CHECKPOINT_DIR": str(tmp_path / "runs")})
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "missing/train" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_gpu_check_runs_on_cpu_and_says_what_it_skipped(tmp_path):
    env = {**os.environ, "QUICK": "1", "GPU_CHECK_DIR": str(tmp_path / "gpu_check"), "CUDA_VISIBLE_DEVICES": "",
           "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no CUDA device: running on the CPU; skipped:" in result.stdout
    assert "phase 3" in (tmp_path / "gpu_check" / "checkpoints" / "student" / "train.log").read_text()
    row = next(line for line in result.stdout.splitlines() if line.startswith("| cpu | fp32 |"))
    assert all(0 <= float(cell) <= 100 for cell in row.strip(" |").split("|")[2:])
