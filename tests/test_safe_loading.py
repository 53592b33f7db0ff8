"""Loading a file never runs code from it: a checkpoint holding a pickled call is refused with one
line wherever a checkpoint is read, before anything in it executes; legitimate checkpoints of this
and of earlier versions (after `python -m runs.upgrade`) load, and resume stays exact."""
import io
import contextlib
from pathlib import Path

import pytest
import torch

import export
import train
from runs import upgrade
from training.state import rng_state
from runs import convert
from helpers.evaluation_cli import CLI as TEST_CLI
from helpers.tiny_runs import base_args, losses, state


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file proves that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def plant(path: Path, marker: Path) -> Path:
    """Replace ``path`` with a checkpoint whose 'model' entry runs code when unpickled."""
    torch.save({"model": Payload(marker), "epoch": 1}, path)
    return path


@pytest.fixture(scope="module")
def trained(university_root, tmp_path_factory):
    """A finished one-epoch teacher run (small and quick), kept read-only by the tests."""
    ckpt = tmp_path_factory.mktemp("safe")
    assert train.main(base_args(university_root, ckpt, "run", "--model", "mccg_convnext_atto", "--optimizer", "adam",
                                "--epochs", "1", "--bigradual_n1", "0", "--bigradual_n2", "0",
                                "--save_every", "1")) == 0
    return ckpt / "run"


@pytest.fixture
def poisoned(trained, tmp_path):
    """A copy of the run whose last.pth and net_001.pth are malicious; returns (run_dir, marker)."""
    import shutil
    run = Path(shutil.copytree(trained, tmp_path / "poisoned"))
    marker = tmp_path / "CODE_RAN"
    for name in ("last.pth", "net_001.pth"):
        plant(run / name, marker)
    return run, marker


def assert_refused(capsys, call, marker, path):
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(io.StringIO()):
        call()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert str(path) in err and "executable content" in err, err
    assert not marker.exists()


@pytest.mark.slow
def test_test_py_last_checkpoint(capsys, poisoned, university_root):
    run, marker = poisoned
    assert_refused(capsys, lambda: TEST_CLI.main(["--name", run.name, "--checkpoint_dir", str(run.parent),
                                                  "--test_dir", str(university_root / "test"), "--device", "cpu"]),
                   marker, run / "last.pth")


@pytest.mark.slow
def test_test_py_which_epoch(capsys, poisoned, university_root):
    run, marker = poisoned
    assert_refused(capsys, lambda: TEST_CLI.main(["--name", run.name, "--checkpoint_dir", str(run.parent),
                                                  "--test_dir", str(university_root / "test"), "--which_epoch", "1",
                                                  "--device", "cpu"]), marker, run / "net_001.pth")


def test_test_py_packed_file(capsys, tmp_path, university_root):
    marker = tmp_path / "CODE_RAN"
    packed = plant(tmp_path / "evil_packed.pt", marker)
    assert_refused(capsys, lambda: TEST_CLI.main(["--packed", str(packed), "--test_dir",
                                                  str(university_root / "test"), "--device", "cpu"]),
                   marker, packed)


@pytest.mark.slow
def test_train_py_resume(capsys, poisoned, university_root):
    run, marker = poisoned
    assert_refused(capsys, lambda: train.main(base_args(university_root, run.parent, run.name, "--resume",
                                                        "--epochs", "2")), marker, run / "last.pth")


@pytest.mark.slow
@pytest.mark.parametrize("as_file", [False, True], ids=["directory", "file"])
def test_teacher_path(capsys, poisoned, university_root, tmp_path, as_file):
    run, marker = poisoned
    teacher = run / "last.pth" if as_file else run
    assert_refused(capsys, lambda: train.main(base_args(university_root, tmp_path, "student", "--epochs", "1",
                                                        "--teacher_path", str(teacher))),
                   marker, run / "last.pth")


@pytest.mark.slow
def test_export_py(capsys, poisoned):
    run, marker = poisoned
    assert_refused(capsys, lambda: export.main(["--name", run.name, "--checkpoint_dir", str(run.parent)]),
                   marker, run / "last.pth")


def test_original_checkpoint_converter(capsys, tmp_path):
    marker = tmp_path / "CODE_RAN"
    original = plant(tmp_path / "net_119.pth", marker)
    assert_refused(capsys, lambda: convert.main([str(original), "--name", "converted", "--checkpoint_dir",
                                                 str(tmp_path / "runs")]), marker, original)


@pytest.mark.slow
def test_new_checkpoints_load_weights_only(trained):
    checkpoint = torch.load(trained / "last.pth", map_location="cpu", weights_only=True)
    assert {"model", "optimizers", "schedulers", "rng", "history"} <= set(checkpoint)


def make_legacy(path: Path) -> None:
    """Rewrite ``path`` the way earlier versions stored the RNG state: NumPy's own tuple."""
    import numpy as np
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    numpy = checkpoint["rng"]["numpy"]
    checkpoint["rng"]["numpy"] = (numpy["algorithm"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                                  numpy["has_gauss"], numpy["cached_gaussian"])
    torch.save(checkpoint, path)


@pytest.mark.slow
def test_earlier_checkpoint_is_refused_then_upgraded_and_resumes_exactly(capsys, university_root, tmp_path):
    common = ("--epochs", "2", "--bigradual_n1", "1", "--bigradual_n2", "1", "--seed", "3")
    assert train.main(base_args(university_root, tmp_path, "full", *common)) == 0
    assert train.main(base_args(university_root, tmp_path, "split", *common[:1], "1", *common[2:])) == 0
    legacy = tmp_path / "split" / "last.pth"
    make_legacy(legacy)
    with pytest.raises(SystemExit):
        train.main(base_args(university_root, tmp_path, "split", "--epochs", "2", "--resume"))
    assert "python -m runs.upgrade" in capsys.readouterr().err

    assert upgrade.main([str(legacy)]) == 0
    assert "converted" in capsys.readouterr().out
    assert upgrade.main([str(legacy)]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert train.main(base_args(university_root, tmp_path, "split", "--epochs", "2", "--resume")) == 0
    assert losses(tmp_path / "full") == losses(tmp_path / "split")
    full, split = state(tmp_path / "full"), state(tmp_path / "split")
    assert all(torch.equal(full[k], split[k]) for k in full)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    import random
    import numpy as np
    from training.state import set_rng_state
    from utils.files import read_torch_file, save_checkpoint
    np.random.seed(11)
    np.random.normal()  # leaves a cached Gaussian in the state
    save_checkpoint({"model": {}, "rng": rng_state()}, tmp_path / "rng.pth")
    expected = (np.random.normal(size=3), random.random(), torch.rand(2))
    np.random.seed(0)
    random.seed(0)
    set_rng_state(read_torch_file(tmp_path / "rng.pth")["rng"])
    again = (np.random.normal(size=3), random.random(), torch.rand(2))
    assert np.array_equal(expected[0], again[0]) and expected[1] == again[1] and torch.equal(expected[2], again[2])
