"""test.py under misuse and concurrency: results never vanish or mix, exports are atomic, and every
problem is one line that leaves existing files byte-identical."""
import io
import contextlib
import os
import shutil

import pytest
import scipy.io
import torch
import yaml

from evaluation import driver, matfile
from evaluation.records import latest_record, load_results
from helpers.evaluation_cli import CLI, assert_test_cli_error, run_cli, write_run
from helpers.files import snapshot


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.manual_seed(0)
    return write_run(tmp_path_factory.mktemp("misuse") / "tiny")


def fresh_copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / run.name, symlinks=True)


def test_results_file_that_is_a_folder(capsys, run, tmp_path, university_root):
    copy = fresh_copy(run, tmp_path)
    (copy / "results.json").mkdir()
    before = snapshot(copy)
    assert_test_cli_error(capsys, ["--name", copy.name, "--checkpoint_dir", tmp_path, "--test_dir",
                                   university_root / "test"], copy / "results.json", "is not a file")
    assert snapshot(copy) == before


def test_read_only_run_folder_fails_before_evaluating(capsys, run, tmp_path, university_root):
    copy = fresh_copy(run, tmp_path)
    copy.chmod(0o555)
    try:
        if os.access(copy, os.W_OK):
            pytest.skip("this user (root) may write into read-only folders")
        assert_test_cli_error(capsys, ["--name", copy.name, "--checkpoint_dir", tmp_path, "--test_dir",
                                       university_root / "test"], copy, "not writable")
        assert "Recall@1" not in capsys.readouterr().out
    finally:
        copy.chmod(0o755)


def test_opts_without_an_input_size(capsys, run, tmp_path, university_root):
    copy = fresh_copy(run, tmp_path)
    opts = yaml.safe_load((copy / "opts.yaml").read_text())
    del opts["w"]
    (copy / "opts.yaml").write_text(yaml.safe_dump(opts))
    before = snapshot(copy)
    assert_test_cli_error(capsys, ["--name", copy.name, "--checkpoint_dir", tmp_path, "--test_dir",
                                   university_root / "test"], copy / "opts.yaml", "'w'")
    assert snapshot(copy) == before


@pytest.mark.slow
def test_ctrl_c_keeps_finished_directions_and_prints_one_line(capsys, run, tmp_path, university_root,
                                                             monkeypatch):
    copy = fresh_copy(run, tmp_path)
    evaluate_direction, calls = driver.evaluate_direction, []

    def interrupted_second_time(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate_direction(*args)

    monkeypatch.setattr(driver, "evaluate_direction", interrupted_second_time)
    with contextlib.redirect_stdout(io.StringIO()):
        code = CLI.main(["--name", copy.name, "--checkpoint_dir", str(tmp_path), "--test_dir",
                         str(university_root / "test"), "--device", "cpu", "--num_workers", "0"])
    assert code == 130
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]  # after the progress bars
    assert last.startswith("error: interrupted") and str(copy / "results.json") in last
    assert [r["direction"] for r in load_results(copy / "results.json").values()] == ["Satellite->Drone"]


@pytest.mark.slow
def test_queries_without_a_match_are_counted(run, tmp_path, university_root):
    test_dir = shutil.copytree(university_root / "test", tmp_path / "test")
    lonely = test_dir / "query_satellite" / "9999"
    shutil.copytree(next((test_dir / "query_satellite").iterdir()), lonely)
    copy = fresh_copy(run, tmp_path)
    out = run_cli("--name", copy.name, "--checkpoint_dir", tmp_path, "--test_dir", test_dir, "--mode", "1")
    queries = len(list((test_dir / "query_satellite").glob("*/*")))
    assert f"note: 1 of {queries} queries have no match in the gallery" in out
    assert latest_record(load_results(copy / "results.json"), "university", "Satellite->Drone")["unmatched_queries"] == 1


@pytest.mark.slow
def test_mat_export_keeps_the_old_file_when_writing_fails(capsys, run, tmp_path, university_root,
                                                          monkeypatch):
    copy = fresh_copy(run, tmp_path)
    run_cli("--name", copy.name, "--checkpoint_dir", tmp_path, "--test_dir", university_root / "test", "--mode",
            "2", "--export_mat")
    good = (copy / "pytorch_result.mat").read_bytes()

    def fail_half_way(f, content):
        f.write(b"MATLAB 5.0 MAT-file, half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matfile.scipy.io, "savemat", fail_half_way)
    with pytest.raises(SystemExit) as exit_info:
        run_cli("--name", copy.name, "--checkpoint_dir", tmp_path, "--test_dir", university_root / "test",
                "--mode", "2", "--export_mat")
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]  # after the progress bars
    assert last.startswith("error: ") and "No space left" in last and "previous file is intact" in last
    assert (copy / "pytorch_result.mat").read_bytes() == good
    assert not list(copy.glob(".*.tmp"))


@pytest.mark.slow
def test_mat_export_stores_paths_that_are_not_utf8(run, tmp_path, university_root):
    test_dir = shutil.copytree(university_root / "test", tmp_path / "test")
    image = next((test_dir / "gallery_satellite").glob("*/*"))
    odd = image.with_name(os.fsdecode(b"sat-\xff.jpg"))
    image.rename(odd)
    copy = fresh_copy(run, tmp_path)
    run_cli("--name", copy.name, "--checkpoint_dir", tmp_path, "--test_dir", test_dir, "--mode", "2",
            "--export_mat")
    paths = [str(p).strip() for p in scipy.io.loadmat(copy / "pytorch_result.mat")["gallery_path"]]
    assert any(p.endswith("sat-\\xff.jpg") for p in paths)


def test_train_folder_given_as_test_folder_gets_a_fitting_hint(capsys, run, university_root):
    assert_test_cli_error(capsys, ["--name", run.name, "--checkpoint_dir", run.parent, "--test_dir",
                                   university_root / "train"], "a training folder, not a test folder",
                          f"did you mean {university_root / 'test'}?")
