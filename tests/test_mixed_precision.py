"""The mixed-precision path without a GPU: ``torch.amp.GradScaler("cpu")`` behaves like the CUDA
scaler (including its "No inf checks were recorded" assertion), so train.py's own step runs here
with an enabled scaler through all three bi-gradual phases, with distillation and across a resume.
Also: evaluation and training set the float32 precision they record."""
import json

import pytest
import torch

import test as evaluate
import train
from training import trainer
from optim.stepping import step_optimizers
from utils.device import configure_precision

from helpers.tiny_runs import base_args, losses, state


def enabled_cpu_scaler(device, enabled):
    # growth_interval=1: the scale doubles after every good step, so updates are countable.
    return torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=1)


def two_optimizers():
    live, frozen = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3), requires_grad=False)
    return live, frozen, torch.optim.SGD([live], lr=0.5), torch.optim.SGD([frozen], lr=0.5)


def test_a_frozen_optimizer_trips_the_scaler_when_stepped():
    # The failure the stepping rule avoids, reproduced on CPU.
    live, _, opt_live, opt_frozen = two_optimizers()
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(live.sum()).backward()
    scaler.step(opt_live)
    with pytest.raises(AssertionError, match="No inf checks"):
        scaler.step(opt_frozen)


def test_step_optimizers_skips_frozen_ones_and_updates_the_scale_once():
    live, frozen, opt_live, opt_frozen = two_optimizers()
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0, growth_interval=1)
    scaler.scale(live.sum()).backward()
    assert step_optimizers([opt_live, opt_frozen], scaler)
    assert torch.equal(live.detach(), torch.full((3,), 0.5))  # 1 - lr · unscaled gradient 1
    assert torch.equal(frozen.detach(), torch.ones(3))
    assert scaler.get_scale() == 8.0  # one update: doubled once


def test_step_optimizers_reports_a_step_skipped_for_overflow():
    live, _, opt_live, opt_frozen = two_optimizers()
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale(live.sum() * float("inf")).backward()
    assert not step_optimizers([opt_live, opt_frozen], scaler)
    assert torch.equal(live.detach(), torch.ones(3))
    assert scaler.get_scale() == 2.0  # backed off once


@pytest.fixture(scope="module")
def teacher_run(university_root, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("amp_teacher")
    args = base_args(university_root, ckpt, "teacher", "--model", "mccg_convnext_atto", "--optimizer", "adam",
                     "--lr", "0.001", "--epochs", "1", "--bigradual_n1", "0", "--bigradual_n2", "0")
    assert train.main(args) == 0
    return ckpt / "teacher"


@pytest.mark.slow
def test_enabled_scaler_trains_through_all_phases_with_distillation_and_resumes_exactly(
        university_root, tmp_path, teacher_run, monkeypatch):
    monkeypatch.setattr(trainer, "grad_scaler", enabled_cpu_scaler)
    common = ("--bigradual_n1", "1", "--bigradual_n2", "2", "--steps", "2", "--seed", "4",
              "--teacher_path", str(teacher_run))
    assert train.main(base_args(university_root, tmp_path, "full", "--epochs", "3", *common)) == 0
    assert train.main(base_args(university_root, tmp_path, "split", "--epochs", "2", *common)) == 0
    assert train.main(base_args(university_root, tmp_path, "split", "--epochs", "3", "--resume")) == 0

    run = tmp_path / "full"
    log = (run / "train.log").read_text()
    assert log.index("phase 1") < log.index("phase 2") < log.index("phase 3")
    assert all(kd > 0 for kd in losses(run, "kd"))
    checkpoint = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    steps_per_epoch = 6 // 3  # 6 training classes, batch 3
    good = 3 * steps_per_epoch - sum(int(float(s)) for s in losses(run, "skipped_steps"))
    assert checkpoint["scaler"]["scale"] == 2.0 ** (8 + good)  # one update per applied step
    assert checkpoint["optimizers"]["lion"]["state"]  # Lion stepped once its weights thawed in phase 3
    assert losses(run) == losses(tmp_path / "split")
    full, split = state(run), state(tmp_path / "split")
    assert all(torch.equal(full[k], split[k]) for k in full)


@pytest.mark.slow
def test_an_epoch_whose_every_step_overflows_says_so_and_records_the_scale(university_root, tmp_path, monkeypatch):
    # 8 · 2^127 overflows float32 itself, as float16 gradients overflow at the default 2^16 on a GPU.
    monkeypatch.setattr(trainer, "grad_scaler",
                        lambda device, enabled: torch.amp.GradScaler("cpu", init_scale=2.0 ** 127))
    assert train.main(base_args(university_root, tmp_path, "overflow", "--epochs", "1", "--bigradual_n1", "0",
                                "--bigradual_n2", "0")) == 0
    steps = 6 // 3  # 6 training classes, batch 3
    assert losses(tmp_path / "overflow", "loss_scale") == pytest.approx([2.0 ** (127 - steps)], rel=1e-5)  # halved per skip
    assert f"the float16 loss scaler skipped all {steps} steps" in (tmp_path / "overflow" / "train.log").read_text()


def test_configure_precision_sets_the_flags_behind_its_label():
    cuda = torch.device("cuda")  # only the label logic; nothing runs on it
    assert configure_precision(cuda, amp=False, tf32=True) == "tf32"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert configure_precision(cuda, amp=True, tf32=False) == "amp-fp16"
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert configure_precision(torch.device("cpu"), amp=True, tf32=True) == "fp32"


@pytest.mark.slow
def test_evaluation_sets_the_precision_it_records(university_root, teacher_run, tmp_path):
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # PyTorch's default for convolutions
    assert evaluate.main(["--name", teacher_run.name, "--checkpoint_dir", str(teacher_run.parent), "--test_dir",
                          str(university_root / "test"), "--mode", "2", "--num_workers", "0",
                          "--device", "cpu"]) == 0
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    record, = [r for r in json.loads((teacher_run / "results.json").read_text()).values()
               if (r["dataset"], r["direction"]) == ("university", "Drone->Satellite")]
    assert (record["device"], record["precision"]) == ("cpu", "fp32")
