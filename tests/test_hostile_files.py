"""Files that attack their reader, and files of the wrong shape: nothing in a file runs, nothing
inflates beyond the file's own size, nothing hangs, a modified packed file is refused, poisoned
results are not recorded, and every bad value is one line that leaves existing files as they were."""
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

import export
import train
from models import build_model
from models._helpers import load_weights_file
from runs import upgrade
from runs.packed import export_packed, load_packed
from utils.errors import UserError
from utils.files import read_torch_file, save_checkpoint

from helpers.evaluation_cli import CLI, NUM_CLASSES, SIZE, write_run

REPO = Path(__file__).resolve().parents[1]
TEACHER = "mccg_convnext_atto"


class Payload:
    """Unpickling this touches ``marker``: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli_error(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.split("\r")[-1].strip()  # after any progress bar
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def cli_args(run_dir, university_root, *extra):
    return ["--name", run_dir.name, "--checkpoint_dir", run_dir.parent, "--test_dir", university_root / "test",
            "--device", "cpu", "--num_workers", "0", "--mode", "1", *extra]


# --------------------------------------------------------------------------- the upgrade tool


def test_upgrade_never_runs_code_from_the_file(tmp_path, capsys):
    marker, path = tmp_path / "ran", tmp_path / "last.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "rng": {"numpy": Payload(marker)}}, path)
    before = path.read_bytes()
    err = cli_error(capsys, upgrade.main, [path])
    assert "not converted" in err and "nothing in it was run" in err
    assert not marker.exists() and path.read_bytes() == before


def test_upgrade_converts_numpy_rng_state_without_unrestricted_loading(tmp_path, capsys, monkeypatch):
    import numpy as np
    path = tmp_path / "last.pth"
    state = np.random.RandomState(5).get_state()
    torch.save({"model": {"w": torch.ones(2)}, "rng": {"numpy": state}}, path)
    real_load = torch.load

    def weights_only_load(*args, **kwargs):
        assert kwargs.get("weights_only") is True, "the upgrade tool must never load without restriction"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", weights_only_load)
    assert upgrade.main([str(path)]) == 0
    converted = read_torch_file(path, "checkpoint")["rng"]["numpy"]
    assert converted["keys"].tolist() == state[1].astype(np.int64).tolist() and converted["pos"] == state[2]


def test_upgrade_hint_only_for_run_checkpoints_and_says_no_code_runs(tmp_path):
    marker = tmp_path / "ran"
    checkpoint, weights = tmp_path / "last.pth", tmp_path / "backbone.pth"
    torch.save({"model": Payload(marker)}, checkpoint)
    torch.save({"state_dict": {"fc.weight": torch.zeros(1)}, "x": Payload(marker)}, weights)
    from runs.checkpoints import load_checkpoint
    with pytest.raises(UserError) as err:
        load_checkpoint(checkpoint)
    assert "runs.upgrade" in str(err.value) and "without running any code" in str(err.value)
    for read in (lambda: load_packed(weights), lambda: load_weights_file(torch.nn.Linear(1, 1), weights, "x")):
        with pytest.raises(UserError) as err:
            read()
        assert "executable content" in str(err.value) and "runs.upgrade" not in str(err.value)
    assert not marker.exists()


# --------------------------------------------------------------------------- memory and hangs


def test_compressed_members_are_refused_before_anything_is_inflated(tmp_path):
    plain, packed = tmp_path / "plain.pth", tmp_path / "deflated.pth"
    torch.save({"model": {"w": torch.zeros(8 * 2 ** 20)}}, plain)  # 32 MiB of zeros
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info), compress_type=zipfile.ZIP_DEFLATED)
    assert packed.stat().st_size < 2 ** 20
    with pytest.raises(UserError, match="compressed members"):
        read_torch_file(packed, "checkpoint")


def test_declared_sizes_beyond_the_file_are_refused(tmp_path):
    path = tmp_path / "liar.pth"
    torch.save({"model": {"w": torch.zeros(4)}}, path)
    data = bytearray(path.read_bytes())
    central = data.rindex(b"PK\x01\x02")  # the last central-directory entry: declare 1 GiB for it
    data[central + 24:central + 28] = (2 ** 30).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="declares more data than the file holds"):
        read_torch_file(path, "checkpoint")


def test_a_fifo_named_like_an_image_is_not_an_image_and_does_not_hang(tmp_path):
    fifo = tmp_path / "0001.jpg"
    os.mkfifo(fifo)
    code = ("import sys; from datasets.folders import BadImageError, load_rgb, try_load_rgb\n"
            "assert try_load_rgb(sys.argv[1], 'skip') is None\n"
            "try:\n    load_rgb(sys.argv[1])\nexcept BadImageError as err:\n    print(err)\n")
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(fifo)], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert str(fifo) in done.stdout and "not a regular file" in done.stdout


# --------------------------------------------------------------------------- packed files


@pytest.fixture(scope="module")
def packed_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("packed") / "student_packed.pt"
    export_packed(build_model("bicrossnet_bnext_tiny", NUM_CLASSES).eval(), "bicrossnet_bnext_tiny", {},
                  NUM_CLASSES, {"h": SIZE, "w": SIZE}, path)
    return path


def test_a_packed_file_with_one_flipped_weight_bit_is_refused(packed_file, tmp_path):
    package = torch.load(packed_file, weights_only=True)
    bits = next(iter(package["binary"].values()))["bits"]
    bits[0] ^= 1
    path = tmp_path / "flipped.pt"
    save_checkpoint(package, path)
    with pytest.raises(UserError, match="do not match the checksum"):
        load_packed(path)
    load_packed(packed_file)  # the untouched file loads


def test_a_packed_file_without_a_checksum_loads_with_a_warning(packed_file, tmp_path):
    package = torch.load(packed_file, weights_only=True)
    del package["checksum"]
    path = tmp_path / "older.pt"
    save_checkpoint(package, path)
    with pytest.warns(UserWarning, match="has no checksum"):
        load_packed(path)


# --------------------------------------------------------------------------- poisoned results


def test_non_finite_features_stop_evaluation_and_nothing_is_recorded(tmp_path, university_root, capsys):
    state = build_model(TEACHER, NUM_CLASSES).state_dict()
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    run = write_run(tmp_path / "diverged", model=TEACHER, state_dict=state)
    before = snapshot(run)
    err = cli_error(capsys, CLI.main, cli_args(run, university_root))
    assert str(run / "last.pth") in err and "non-finite" in err and re.search(r"for \d+ of \d+ images", err)
    assert snapshot(run) == before


# --------------------------------------------------------------------------- one line, not a traceback


@pytest.mark.parametrize("bad", ["text", "meta"])
def test_a_weight_that_is_not_a_tensor_with_data_is_one_line(tmp_path, university_root, capsys, bad):
    state = build_model(TEACHER, NUM_CLASSES).state_dict()
    key = next(iter(state))
    state[key] = "not a tensor" if bad == "text" else torch.empty(state[key].shape, device="meta")
    run = write_run(tmp_path / "odd", model=TEACHER, state_dict=state)
    before = snapshot(run)
    err = cli_error(capsys, CLI.main, cli_args(run, university_root))
    assert key in err and "not tensors with data" in err
    assert snapshot(run) == before


def test_a_packed_state_entry_that_is_text_is_one_line(packed_file, tmp_path):
    from runs.packed import package_checksum
    package = torch.load(packed_file, weights_only=True)
    key = next(iter(package["state"]))
    package["state"][key] = "not a tensor"
    package["checksum"] = package_checksum(package)  # crafted consistently
    path = tmp_path / "odd.pt"
    save_checkpoint(package, path)
    with pytest.raises(UserError, match="not tensors with data"):
        load_packed(path)


BAD_OPTS = [("h", "abc"), ("num_classes", -3), ("num_classes", "1e9"), ("num_classes", 10 ** 9),
            ("dataset", "imagenet"), ("args", ["epochs", 30])]


@pytest.mark.parametrize("key, value", BAD_OPTS)
def test_impossible_opts_values_are_one_line_in_test_and_export(tmp_path, university_root, capsys, key, value):
    run = write_run(tmp_path / "run", model=TEACHER)
    opts = yaml.safe_load((run / "opts.yaml").read_text())
    (run / "opts.yaml").write_text(yaml.safe_dump(dict(opts, **{key: value})))
    before = snapshot(run)
    assert key in cli_error(capsys, CLI.main, cli_args(run, university_root))
    assert key in cli_error(capsys, export.main, ["--name", "run", "--checkpoint_dir", tmp_path, "--speed_batch", "0"])
    assert snapshot(run) == before


@pytest.mark.parametrize("args", [{"epochs": "30"}, ["epochs", 30], {"weight_decay": "abc"}])
def test_saved_flags_of_the_wrong_type_are_one_line_on_resume(tmp_path, university_root, capsys, args):
    run = write_run(tmp_path / "run", model=TEACHER)
    opts = yaml.safe_load((run / "opts.yaml").read_text())
    (run / "opts.yaml").write_text(yaml.safe_dump(dict(opts, args=args)))
    before = snapshot(run)
    err = cli_error(capsys, train.main, ["--name", "run", "--checkpoint_dir", tmp_path, "--data_dir",
                                         university_root / "train", "--resume"])
    assert "args" in err or "weight_decay" in err
    assert snapshot(run) == before


def test_deeply_nested_results_file_is_one_line(tmp_path, university_root, capsys):
    run = write_run(tmp_path / "run", model=TEACHER)
    (run / "results.json").write_text("[" * 200_000 + "]" * 200_000)
    before = snapshot(run)
    err = cli_error(capsys, CLI.main, cli_args(run, university_root))
    assert "results.json" in err and "nested too deeply" in err
    assert snapshot(run) == before


def test_compare_runs_on_a_non_numeric_metric_is_one_line(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("compare_runs", REPO / "scripts" / "compare_runs.py")
    compare_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare_runs)
    run = write_run(tmp_path / "run", model=TEACHER)
    record = {"dataset": "university", "direction": "Drone->Satellite", "checkpoint": "last.pth", "h": SIZE,
              "w": SIZE, "flip": True, "engine": "float", "device": "cpu", "precision": "fp32",
              "recall@1": "high", "ap": 50.0, "time": "2026-01-01T00:00:00+00:00"}
    (run / "results.json").write_text(json.dumps({"k": record}))
    err = cli_error(capsys, compare_runs.main, ["--checkpoint_dir", tmp_path, "run"])
    assert "recall@1" in err and "'high'" in err


def test_resume_on_a_read_only_run_folder_is_one_line(tmp_path, university_root, capsys):
    run = write_run(tmp_path / "run", model=TEACHER)
    run.chmod(0o555)
    try:
        if os.access(run, os.W_OK):
            pytest.skip("this user (root) may write into read-only folders")
        before = snapshot(run)
        err = cli_error(capsys, train.main, ["--name", "run", "--checkpoint_dir", tmp_path, "--data_dir",
                                             university_root / "train", "--resume"])
        assert "not writable" in err
        assert snapshot(run) == before
    finally:
        run.chmod(0o755)

