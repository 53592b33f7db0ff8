"""train.py end to end on tiny synthetic data: losses fall, phases unfreeze in order, resume is exact,
distillation and DDP run, checkpoints load weights-only, and bad flags fail with one clear line."""
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import train
from runs.upgrade import rng_state_from_legacy
from training.state import rng_state, seeded_rngs, set_rng_state
from models import build_model
from optim.partition import partition_parameters
from utils.files import save_checkpoint
from helpers.tiny_runs import base_args, losses, state

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_student_loss_decreases(university_root, tmp_path):
    args = base_args(university_root, tmp_path, "student", "--epochs", "6", "--lr", "0.002",
                     "--bigradual_n1", "0", "--bigradual_n2", "0", "--no-autoaugment", "--erasing_p", "0")
    assert train.main(args) == 0
    run = tmp_path / "student"
    totals = losses(run)
    assert len(totals) == 6
    assert totals[-1] < 0.9 * totals[0], totals
    assert {"opts.yaml", "train.log", "metrics.csv", "loss_curve.png", "last.pth", "net_006.pth"} <= \
        {p.name for p in run.iterdir()}


@pytest.mark.slow
def test_teacher_loss_decreases_with_sgd_recipe(university_root, tmp_path):
    args = base_args(university_root, tmp_path, "teacher", "--model", "mccg_convnext_atto", "--optimizer", "sgd",
                     "--lr", "0.003", "--epochs", "6", "--sample_num", "2", "--bigradual_n1", "0", "--bigradual_n2",
                     "0", "--no-autoaugment", "--erasing_p", "0")
    assert train.main(args) == 0
    totals = losses(tmp_path / "teacher")
    assert totals[-1] < 0.9 * totals[0], totals


@pytest.mark.slow
def test_bigradual_phases_update_head_then_full_precision_then_binary(university_root, tmp_path):
    args = base_args(university_root, tmp_path, "phases", "--epochs", "3", "--bigradual_n1", "1",
                     "--bigradual_n2", "2", "--save_every", "1", "--seed", "5")
    assert train.main(args) == 0
    run = tmp_path / "phases"
    torch.manual_seed(5)
    initial = build_model("bicrossnet_bnext_tiny", 6, block=2, head_input="spatial", binarizer="bnext",
                          temperature=0.0).state_dict()
    after = [state(run, f"net_00{e}.pth") for e in (1, 2, 3)]
    groups = {g: [n for n, _ in params] for g, params in
              partition_parameters(build_model("bicrossnet_bnext_tiny", 6)).items()}

    def changed(a, b, group):
        return [n for n in groups[group] if not torch.equal(a[n], b[n])]

    # Epoch 1: only the head moves.
    assert changed(initial, after[0], "head")
    assert not changed(initial, after[0], "full_precision") and not changed(initial, after[0], "binary")
    # Epoch 2: full-precision backbone parameters join; binary latent weights stay put.
    assert changed(after[0], after[1], "full_precision")
    assert not changed(after[0], after[1], "binary")
    # Epoch 3: binary latent weights train too.
    assert changed(after[1], after[2], "binary")
    log = (run / "train.log").read_text()
    assert log.index("phase 1") < log.index("phase 2") < log.index("phase 3")


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_run(university_root, tmp_path):
    # The resumed epoch enters phase 3, so resuming also crosses an unfreezing boundary.
    common = ("--bigradual_n1", "1", "--bigradual_n2", "1", "--steps", "1", "--seed", "3")
    assert train.main(base_args(university_root, tmp_path, "full", "--epochs", "2", *common)) == 0
    assert train.main(base_args(university_root, tmp_path, "split", "--epochs", "1", *common)) == 0
    # Runs saved before --views was removed record it; resuming them ignores the stale key.
    opts_path = tmp_path / "split" / "opts.yaml"
    opts = yaml.safe_load(opts_path.read_text())
    opts_path.write_text(yaml.safe_dump({**opts, "args": {**opts["args"], "views": 2}}))
    assert train.main(base_args(university_root, tmp_path, "split", "--epochs", "2", "--resume")) == 0
    assert losses(tmp_path / "full") == losses(tmp_path / "split")
    full, split = state(tmp_path / "full"), state(tmp_path / "split")
    assert all(torch.equal(full[k], split[k]) for k in full)


def draws():
    """Numbers from each RNG a checkpoint restores; NumPy's normal draw uses its cached Gaussian."""
    return random.random(), np.random.random(3).tolist(), np.random.normal(), torch.rand(3).tolist()


@pytest.mark.slow
def test_checkpoints_load_weights_only_with_the_rng_state(university_root, tmp_path):
    args = base_args(university_root, tmp_path, "run", "--model", "mccg_convnext_atto", "--optimizer", "sgd",
                     "--epochs", "1", "--bigradual_n1", "0", "--bigradual_n2", "0")
    assert train.main(args) == 0
    for name in ("last.pth", "net_001.pth"):
        checkpoint = torch.load(tmp_path / "run" / name, map_location="cpu", weights_only=True)
        numpy_state = checkpoint["rng"]["numpy"]
        assert numpy_state["algorithm"] == "MT19937" and numpy_state["keys"].dtype == torch.int64
        assert checkpoint["epoch"] == 1 and checkpoint["model"]


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    np.random.seed(11)
    np.random.normal()  # leaves the second Gaussian of the pair cached: has_gauss = 1
    saved = rng_state()
    expected = draws()
    save_checkpoint({"rng": saved}, tmp_path / "rng.pth")
    draws()
    set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"])
    assert draws() == expected
    assert saved["numpy"]["has_gauss"] == 1


def test_rng_state_from_legacy_converts_the_numpy_tuple(tmp_path):
    np.random.seed(12)
    np.random.normal()
    legacy = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    expected = draws()
    converted = rng_state_from_legacy(legacy)
    assert converted.keys() == legacy.keys()
    assert {k: v for k, v in converted["numpy"].items() if k != "keys"} == {
        "algorithm": "MT19937", "pos": legacy["numpy"][2], "has_gauss": 1, "cached_gaussian": legacy["numpy"][4]}
    assert converted["numpy"]["keys"].tolist() == legacy["numpy"][1].tolist()
    save_checkpoint({"rng": converted}, tmp_path / "rng.pth")
    set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"])
    assert draws() == expected


def test_seeded_rngs_draws_from_the_value_and_leaves_every_other_stream_alone(monkeypatch):
    def reseeds_an_accelerator(*args):
        raise AssertionError("an accelerator generator was reseeded")
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    expected = draws()
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeds_an_accelerator)
    with seeded_rngs(2024):
        inside = (torch.rand(2).tolist(), random.random(), float(np.random.rand()))
    assert draws() == expected
    reference = (torch.rand(2, generator=torch.Generator().manual_seed(2024)).tolist(),
                 random.Random(2024).random(), float(np.random.RandomState(2024).rand()))
    assert inside == reference


@pytest.mark.slow
def test_distillation_from_a_teacher_run(university_root, tmp_path):
    teacher = base_args(university_root, tmp_path, "teacher", "--model", "mccg_convnext_atto", "--optimizer", "sgd",
                        "--lr", "0.01", "--epochs", "1", "--bigradual_n1", "0", "--bigradual_n2", "0")
    assert train.main(teacher) == 0
    for mode in ("kl", "mse"):
        student = base_args(university_root, tmp_path, f"student_{mode}", "--epochs", "1", "--teacher_path",
                            str(tmp_path / "teacher"), "--kd_mode", mode, "--kd_weight", "2")
        assert train.main(student) == 0
        kd, = losses(tmp_path / f"student_{mode}", "kd")
        ce, = losses(tmp_path / f"student_{mode}", "ce")
        triplet, = losses(tmp_path / f"student_{mode}", "triplet")
        total, = losses(tmp_path / f"student_{mode}", "total")
        assert kd > 0
        assert total == pytest.approx(ce + triplet + 2 * kd, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("views, port", [("2", "29533"), ("3", "29534")])
def test_ddp_with_two_gloo_processes(university_root, tmp_path, views, port):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           str(REPO / "train.py"), *base_args(university_root, tmp_path, "ddp", "--epochs", "2", "--bigradual_n1",
                                              "0", "--bigradual_n2", "1", "--batchsize", "2", "--views", views)]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "ddp"
    assert len(losses(run)) == 2 and all(torch.isfinite(torch.tensor(losses(run))))
    trained = state(run)
    torch.manual_seed(1)
    initial = build_model("bicrossnet_bnext_tiny", 6).state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in trained if k.startswith("backbone"))
    assert (run / "train.log").read_text().count("done:") == 1  # only rank 0 writes


@pytest.mark.parametrize("extra, message", [
    (["--model", "resnet_9000"], "--model 'resnet_9000' is not a known model"),
    (["--bigradual_n1", "5", "--bigradual_n2", "2"], "--bigradual_n2 (2) must be >= --bigradual_n1 (5)"),
    (["--teacher_path", "/nonexistent/teacher"], "--teacher_path /nonexistent/teacher does not exist"),
    (["--dataset", "sues"], "--dataset sues needs --altitude"),
    (["--batchsize", "0"], "--batchsize must be a positive integer"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--temperature_decay", "-0.5"], "--temperature_decay must be >= 0"),
    (["--kd_temperature", "0"], "--kd_temperature must be > 0 for kd_mode kl"),
])
def test_bad_flags_fail_with_one_line(university_root, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        train.main(base_args(university_root, tmp_path, "bad", *extra))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
