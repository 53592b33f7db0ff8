"""Guarantees the README states, each checked: export.py --out never replaces a file that is not an
earlier export, opts.yaml is read without running Python tags, a second stop signal aborts at once,
and the recipe scripts read relative paths from the directory they are run from."""
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import export
from training.stop_signals import stop_on_signals

from helpers.evaluation_cli import CLI, write_run

REPO = Path(__file__).resolve().parents[1]


def one_line_error(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.split("\r")[-1].strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("target", ["notes.txt", "run/last.pth", "run/opts.yaml"])
def test_export_out_refuses_to_replace_a_file_that_is_not_an_export(tmp_path, capsys, target):
    run = write_run(tmp_path / "run", model="mccg_convnext_atto")
    (tmp_path / "notes.txt").write_text("my notes\n")
    before = (tmp_path / target).read_bytes()
    err = one_line_error(capsys, export.main, ["--name", "run", "--checkpoint_dir", tmp_path, "--out",
                                               tmp_path / target, "--speed_batch", "0"])
    assert str(tmp_path / target) in err and "not a packed model file" in err
    assert (tmp_path / target).read_bytes() == before
    assert not any(p.name.endswith(".tmp") for p in run.iterdir())


def test_opts_yaml_with_a_python_tag_is_refused_without_running_it(tmp_path, university_root, capsys):
    run = write_run(tmp_path / "run", model="mccg_convnext_atto")
    marker = tmp_path / "ran"
    opts = (run / "opts.yaml").read_text()
    (run / "opts.yaml").write_text(opts + f"payload: !!python/object/apply:os.system ['touch {marker}']\n")
    err = one_line_error(capsys, CLI.main, ["--name", "run", "--checkpoint_dir", tmp_path, "--test_dir",
                                            university_root / "test", "--device", "cpu"])
    assert "opts.yaml is not valid YAML" in err
    assert not marker.exists()


def test_a_second_ctrl_c_aborts_at_once():
    trainer = SimpleNamespace(interrupted=0)
    with stop_on_signals(trainer):
        os.kill(os.getpid(), signal.SIGINT)  # the first: noted, the step goes on
        assert trainer.interrupted == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_a_second_sigterm_ends_the_process_at_once():
    code = ("import os, signal, sys, types\n"
            "from training.stop_signals import stop_on_signals\n"
            "trainer = types.SimpleNamespace(interrupted=0)\n"
            "with stop_on_signals(trainer):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    print('first noted', trainer.interrupted == signal.SIGTERM, flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    print('still running after the second', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == -signal.SIGTERM
    assert done.stdout == "first noted True\n"


def test_recipe_script_reads_relative_paths_from_the_callers_directory(tmp_path):
    caller = tmp_path / "caller"
    caller.mkdir()
    done = subprocess.run(["bash", str(REPO / "train_and_evaluate_university.sh")], cwd=caller,
                          env={**os.environ, "DATA_DIR": "missing/train", "TEST_DIR": "missing/test",
                               "CHECKPOINT_DIR": "recipe_runs", "FROM_SCRATCH": "1"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert str(caller / "missing" / "train") in done.stderr, done.stderr
    assert not (REPO / "recipe_runs").exists()
