"""Files written in or beside a run folder never follow a link planted there by someone else with
write access to a shared checkpoint folder; one writer per folder, whatever its name; --name
stays inside --checkpoint_dir in every command."""
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch

import export
import train
from datasets.synthetic.cli import main as synthetic_main
from evaluation.records import lock_path, record_result
from evaluation.visualize import save_retrieval_grid
from runs.claim import RunClaim
from training.training_log import LOG_FILE, TensorBoardLog, attach_log_file, setup_logger
from utils.errors import UserError

from helpers.errors import one_line_error
from helpers.evaluation_cli import CLI, write_run

SECRET = b"someone else's file\n"
RECORD = {"dataset": "university", "direction": "Drone->Satellite", "checkpoint": "last.pth", "h": 1, "w": 1,
          "flip": True, "engine": "float", "device": "cpu", "precision": "fp32"}


def planted_link(link: Path, tmp_path: Path) -> Path:
    """A symbolic link at ``link`` to a file outside the run folder; returns that file."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(SECRET)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim)
    return victim


def test_run_lock_is_not_opened_through_a_planted_link(tmp_path):
    victim = planted_link(tmp_path / ".run.lock", tmp_path)
    claim = RunClaim(tmp_path, "run", resume=False, overwrite=False)
    with pytest.raises(UserError, match="symbolic link"):
        claim.lock()
    assert victim.read_bytes() == SECRET


def test_results_lock_is_not_opened_through_a_planted_link(tmp_path):
    results = tmp_path / "run" / "results.json"
    victim = planted_link(lock_path(results), tmp_path)
    with pytest.raises(UserError, match="symbolic link"):
        record_result(results, RECORD)
    assert victim.read_bytes() == SECRET and not results.exists()


def test_train_log_is_not_appended_through_a_planted_link(tmp_path):
    victim = planted_link(tmp_path / "run" / LOG_FILE, tmp_path)
    logger = setup_logger(True)
    logger.info("a record held until the log file is attached")
    try:
        with pytest.raises(UserError, match="symbolic link"):
            attach_log_file(tmp_path / "run")
    finally:
        setup_logger(True)  # drop the held records and any handler
        logging.getLogger("bicrossnet").handlers.clear()
    assert victim.read_bytes() == SECRET


def grid_inputs(university_root):
    paths = [str(p) for p in sorted((university_root / "test" / "gallery_satellite").glob("*/*"))][:3]
    features = torch.nn.functional.normalize(torch.arange(9.0).reshape(3, 3) + 1, dim=1)
    labels = torch.arange(3)
    return paths, labels, features, paths, labels, features


def test_retrieval_picture_replaces_a_planted_link_instead_of_writing_through_it(tmp_path, university_root):
    picture = tmp_path / "run" / "retrieval_drone_to_satellite.png"
    victim = planted_link(picture, tmp_path)
    save_retrieval_grid(picture, *grid_inputs(university_root), num_queries=2, top=2, tile=16)
    assert victim.read_bytes() == SECRET
    assert not picture.is_symlink() and picture.read_bytes().startswith(b"\x89PNG")


def test_retrieval_picture_that_cannot_be_written_keeps_the_previous_one(tmp_path, university_root, monkeypatch):
    picture = tmp_path / "retrieval.png"
    save_retrieval_grid(picture, *grid_inputs(university_root), num_queries=2, top=2, tile=16)
    before = picture.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", disk_full)
    with pytest.raises(UserError, match="previous file is intact"):
        save_retrieval_grid(picture, *grid_inputs(university_root), num_queries=3, top=3, tile=16)
    assert picture.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["retrieval.png"]  # no temporary file left


def test_tensorboard_folder_that_is_a_link_is_refused_and_event_names_cannot_be_guessed(tmp_path):
    pytest.importorskip("tensorboard")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tensorboard").symlink_to(elsewhere)
    with pytest.raises(UserError, match="symbolic link"):
        TensorBoardLog(tmp_path / "run")
    assert list(elsewhere.iterdir()) == []

    names = []
    for folder in ("a", "b"):
        board = TensorBoardLog(tmp_path / folder)
        board.add({"epoch": 1, "total": 1.0})
        board.close()
        names += [p.name for p in (tmp_path / folder / "tensorboard").iterdir()]
    assert all(re.search(r"\.[0-9a-f]{16}$", name) for name in names), names
    assert names[0].rsplit(".", 1)[1] != names[1].rsplit(".", 1)[1]


def fake_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "opts.yaml").write_text("model: x\n")
    (folder / "last.pth").write_bytes(b"checkpoint")
    return folder


def test_lock_is_keyed_on_the_folder_so_a_linked_alias_is_refused(tmp_path):
    fake_run(tmp_path / "run")
    (tmp_path / "alias").symlink_to(tmp_path / "run")
    holder = RunClaim(tmp_path, "run", resume=True, overwrite=False)
    holder.lock()
    try:
        with pytest.raises(UserError, match="is being trained by process"):
            RunClaim(tmp_path, "alias", resume=True, overwrite=False).lock()
    finally:
        holder.release()
    RunClaim(tmp_path, "alias", resume=True, overwrite=False).lock()  # free again once released


def test_test_py_refuses_a_name_outside_the_checkpoint_dir(tmp_path, university_root, capsys):
    outside = write_run(tmp_path / "outside", model="mccg_convnext_atto")
    before = sorted(p.name for p in outside.iterdir())
    err = one_line_error(capsys, CLI.main, ["--name", "../outside", "--checkpoint_dir", tmp_path / "checkpoints",
                                       "--test_dir", university_root / "test", "--device", "cpu",
                                       "--num_workers", "0"])
    assert "--name '../outside'" in err
    assert sorted(p.name for p in outside.iterdir()) == before


def test_export_py_refuses_a_name_outside_the_checkpoint_dir(tmp_path, capsys):
    outside = write_run(tmp_path / "outside", model="mccg_convnext_atto")
    before = sorted(p.name for p in outside.iterdir())
    err = one_line_error(capsys, export.main, ["--name", "../outside", "--checkpoint_dir", tmp_path / "checkpoints",
                                          "--speed_batch", "0"])
    assert "--name '../outside'" in err
    assert sorted(p.name for p in outside.iterdir()) == before


def test_resume_together_with_overwrite_is_refused(tmp_path, university_root, capsys):
    run = fake_run(tmp_path / "run")
    err = one_line_error(capsys, train.main, ["--name", "run", "--checkpoint_dir", tmp_path, "--data_dir",
                                         university_root / "train", "--resume", "--overwrite"])
    assert "--resume" in err and "--overwrite" in err and "only one" in err
    assert sorted(p.name for p in run.iterdir()) == ["last.pth", "opts.yaml"]


def test_synthetic_generator_refuses_a_split_folder_that_is_a_link(tmp_path, capsys):
    argv = ["--out", tmp_path / "G", "--train_places", "2", "--test_places", "1", "--distractor_places", "1",
            "--drones", "1", "--size", "32"]
    synthetic_main([str(a) for a in argv])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_bytes(SECRET)
    shutil.rmtree(tmp_path / "G" / "train")
    (tmp_path / "G" / "train").symlink_to(elsewhere)
    err = one_line_error(capsys, synthetic_main, argv)
    assert str(tmp_path / "G" / "train") in err and "symbolic link" in err
    assert (elsewhere / "keep.txt").read_bytes() == SECRET
