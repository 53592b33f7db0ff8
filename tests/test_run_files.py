"""Run-directory files: atomic checkpoints, refusal to clobber runs, metrics kept in step with checkpoints."""
import csv
import os

import pytest
import torch
import yaml

from runs.claim import RunClaim, save_opts
from training.training_log import MetricsTable
from models._helpers import load_model_state
from runs.checkpoints import load_checkpoint, load_opts, resolve_run
from runs.layout import checkpoint_name
from utils.errors import UserError
from utils.files import atomic_write_bytes, save_checkpoint


def test_save_checkpoint_round_trip_and_leaves_no_temporary(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    save_checkpoint(state, tmp_path / "last.pth")
    loaded = load_checkpoint(tmp_path / "last.pth")
    assert loaded["epoch"] == 3
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert sorted(os.listdir(tmp_path)) == ["last.pth"]


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "last.pth"
    save_checkpoint({"model": {}, "epoch": 1}, target)
    before = target.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"half-written")
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.pth"]


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "unreadable"),
    (b"not a checkpoint at all", "unreadable"),
])
def test_load_checkpoint_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "last.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_load_checkpoint_rejects_truncated_file(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint({"model": {"w": torch.randn(100, 100)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="unreadable"):
        load_checkpoint(path)


def test_load_checkpoint_rejects_foreign_dict(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"weights": 1}, path)
    with pytest.raises(UserError, match="not a BiCrossNet checkpoint"):
        load_checkpoint(path)


def test_load_model_state_names_the_mismatch():
    model = torch.nn.Linear(3, 2)
    state = {"weight": torch.zeros(4, 3), "extra": torch.zeros(1)}
    with pytest.raises(UserError) as err:
        load_model_state(model, state, "run/last.pth", "tiny_linear")
    text = str(err.value)
    assert "tiny_linear" in text and "run/last.pth" in text
    assert "1 missing keys (bias)" in text and "1 unexpected keys (extra)" in text
    assert "weight (4, 3) vs (2, 3)" in text


def claim(tmp_path, name="exp", resume=False, overwrite=False) -> RunClaim:
    return RunClaim(tmp_path, name, resume=resume, overwrite=overwrite)


def test_run_claim_refuses_existing_run_without_overwrite(tmp_path):
    run = claim(tmp_path).create()
    save_opts(run, {"model": "m", "num_classes": 3, "model_options": {}})
    save_checkpoint({"model": {}}, run / "last.pth")
    before = (run / "last.pth").read_bytes()
    with pytest.raises(UserError, match="--overwrite"):
        claim(tmp_path)
    assert (run / "last.pth").read_bytes() == before
    assert claim(tmp_path, resume=True).create() == run
    replacing = claim(tmp_path, overwrite=True)
    fresh = replacing.create()
    assert list(fresh.iterdir()) == [] and (tmp_path / ".exp.replaced" / "last.pth").read_bytes() == before
    replacing.abandon()  # a start that failed: the old run is back
    assert (run / "last.pth").read_bytes() == before and not (tmp_path / ".exp.replaced").exists()
    replacing = claim(tmp_path, overwrite=True)
    replacing.create()
    replacing.commit()  # the new run has its first checkpoint: the old one is gone
    assert list(run.iterdir()) == [] and not (tmp_path / ".exp.replaced").exists()


@pytest.mark.parametrize("name", ["..", "../outside", "/abs/path", ""])
def test_run_claim_keeps_runs_inside_the_checkpoint_dir(tmp_path, name):
    with pytest.raises(UserError, match="--name"):
        claim(tmp_path, name)


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(UserError, match="nothing to resume"):
        claim(tmp_path, "missing", resume=True)


def test_opts_round_trip_and_errors(tmp_path):
    opts = {"model": "bicrossnet_bnext_tiny", "num_classes": 7, "model_options": {"block": 2}, "h": 64,
            "w": 64}
    save_opts(tmp_path, opts)
    assert load_opts(tmp_path) == opts
    (tmp_path / "opts.yaml").write_text(yaml.safe_dump({"model": "x"}))
    with pytest.raises(UserError, match="num_classes"):
        load_opts(tmp_path)
    with pytest.raises(UserError, match="opts.yaml does not exist"):
        load_opts(tmp_path / "nowhere")


def test_checkpoint_names_and_resolution(tmp_path):
    assert checkpoint_name("last") == "last.pth"
    assert checkpoint_name(7) == "net_007.pth" == checkpoint_name("7")
    with pytest.raises(UserError, match="which_epoch must be"):
        checkpoint_name("best")
    (tmp_path / "net_002.pth").write_bytes(b"")
    assert resolve_run(tmp_path, 2) == (tmp_path, tmp_path / "net_002.pth")
    assert resolve_run(tmp_path / "net_002.pth") == (tmp_path, tmp_path / "net_002.pth")


def test_metrics_table_drops_epochs_that_will_be_rerun(tmp_path):
    table = MetricsTable(tmp_path)
    for epoch in (1, 2, 3):
        table.append({"epoch": epoch, "total": 1.0 / epoch})
    resumed = MetricsTable(tmp_path, keep_through_epoch=2)
    resumed.append({"epoch": 3, "total": 0.25})
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert float(rows[-1]["total"]) == 0.25
    resumed.plot()
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
