"""Every retrieval direction of University-1652 (street view included) through the library and test.py.

The street folders are made here, as copies of the tiny split's drone folders (query_drone ->
query_street, gallery_drone -> gallery_street), so these tests hold whether or not the synthetic
generator writes street folders itself.
"""
import json
import shutil
from pathlib import Path

import pytest
import scipy.io
import torch

from datasets import DATASET_MODES, DRONE_QUERY_MODES, MODE_NAMES, modes_in_split, resolve_test_folders
from evaluation.metrics import METRIC_NAMES, evaluate_retrieval_loop
from evaluation.records import latest_record
from helpers.evaluation_cli import SIZE, assert_test_cli_error, run_cli, write_run
from utils.errors import UserError

# Written out, not read from MODES: what test.py --mode N must mean.
FOLDERS = {1: ("query_satellite", "gallery_drone"), 2: ("query_drone", "gallery_satellite"),
           3: ("query_street", "gallery_satellite"), 4: ("query_satellite", "gallery_street"),
           5: ("query_drone", "gallery_street"), 6: ("query_street", "gallery_drone")}
NAMES = {1: "Satellite->Drone", 2: "Drone->Satellite", 3: "Street->Satellite", 4: "Satellite->Street",
         5: "Drone->Street", 6: "Street->Drone"}
TAGS = {1: "satellite_to_drone", 2: "drone_to_satellite", 3: "street_to_satellite", 4: "satellite_to_street",
        5: "drone_to_street", 6: "street_to_drone"}


def street_split(university_root, folder: Path, *street_folders: str) -> Path:
    """A copy of the tiny University test split holding exactly ``street_folders`` (copies of the drone
    folders of the same role)."""
    source = university_root / "test"
    test = shutil.copytree(source, folder, ignore=lambda d, names: [n for n in names
                                                                   if Path(d) == source and "street" in n])
    for name in street_folders:
        shutil.copytree(test / name.replace("street", "drone"), test / name)
    return test


def key(direction: str, run: str = "last.pth") -> str:
    return f"university/{direction}/{run}/{SIZE}x{SIZE}/flip/float/cpu-fp32"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A (fast) ConvNeXt teacher run, untrained: the tests compare test.py with direct computation."""
    torch.manual_seed(3)
    return write_run(tmp_path_factory.mktemp("directions") / "teacher", "mccg_convnext_atto")


def fresh(run: Path, tmp_path: Path) -> Path:
    """A copy of ``run`` without results, for one test's results.json."""
    return shutil.copytree(run, tmp_path / "checkpoints" / run.name)


def test_mode_names_and_view_sets_follow_the_folder_table():
    assert MODE_NAMES == NAMES
    assert DRONE_QUERY_MODES == (2, 5)
    assert DATASET_MODES == {"university": (1, 2, 3, 4, 5, 6), "sues": (1, 2)}


def test_every_mode_resolves_its_query_and_gallery_folders(university_root, tmp_path):
    test = street_split(university_root, tmp_path / "test", "query_street", "gallery_street")
    for mode, (query, gallery) in FOLDERS.items():
        assert resolve_test_folders(test, "university", None, mode) == (test / query, test / gallery), mode


def test_unknown_mode_and_sues_street_mode_are_value_errors(university_root, sues_root):
    with pytest.raises(ValueError, match="mode=7"):
        resolve_test_folders(university_root / "test", "university", None, 7)
    for mode in (3, 4, 5, 6):
        with pytest.raises(ValueError, match="SUES-200 has no street view"):
            resolve_test_folders(sues_root / "test", "sues", 150, mode)


def test_a_missing_street_folder_is_named(university_root, sues_root, tmp_path):
    test = street_split(university_root, tmp_path / "test", "query_street")
    with pytest.raises(UserError, match="gallery_street not found") as info:
        resolve_test_folders(test, "university", None, 5)
    assert "query_satellite" not in str(info.value)  # no spelling hint pointing at another view
    with pytest.raises(UserError, match="SUES-200 test split .* no street view"):
        resolve_test_folders(sues_root / "test", "university", None, 3)  # a SUES split given as University


def test_modes_in_split_lists_the_directions_present(university_root, sues_root, tmp_path):
    bare = street_split(university_root, tmp_path / "bare")
    assert modes_in_split(bare, "university") == ([1, 2], {3: ["query_street"], 4: ["gallery_street"],
                                                           5: ["gallery_street"], 6: ["query_street"]})
    queries_only = street_split(university_root, tmp_path / "queries", "query_street")
    assert modes_in_split(queries_only, "university") == ([1, 2, 3, 6], {4: ["gallery_street"],
                                                                         5: ["gallery_street"]})
    full = street_split(university_root, tmp_path / "full", "query_street", "gallery_street")
    assert modes_in_split(full, "university") == ([1, 2, 3, 4, 5, 6], {})
    assert modes_in_split(sues_root / "test", "sues", 150) == ([1, 2], {})


@pytest.mark.slow
def test_mode_all_evaluates_every_direction_like_the_reference(teacher, university_root, tmp_path):
    test = street_split(university_root, tmp_path / "test", "query_street", "gallery_street")
    run = fresh(teacher, tmp_path)
    stdout = run_cli("--name", run.name, "--checkpoint_dir", run.parent, "--test_dir", test, "--mode", "all",
                     "--export_mat")
    assert "skips" not in stdout
    results = json.loads((run / "results.json").read_text())
    assert sorted(results) == sorted(key(name) for name in NAMES.values())
    for mode, (query_folder, gallery_folder) in FOLDERS.items():
        mat = scipy.io.loadmat(run / f"pytorch_result_{TAGS[mode]}.mat")
        assert f"/{query_folder}/" in mat["query_path"][0] and f"/{gallery_folder}/" in mat["gallery_path"][0]
        reference = evaluate_retrieval_loop(mat["query_f"], mat["query_label"][0], mat["gallery_f"],
                                            mat["gallery_label"][0])
        record = latest_record(results, "university", NAMES[mode])
        assert record["num_queries"] == len(list((test / query_folder).glob("*/*")))
        for name in METRIC_NAMES:
            assert record[name] == pytest.approx(reference[name], abs=1e-9), (mode, name)
    # More than two directions: the summary table, one line a direction, as recorded.
    table = stdout[stdout.index("University-1652 summary"):].splitlines()[1:7]
    for line, name in zip(table, NAMES.values()):
        record = latest_record(results, "university", name)
        assert line.split() == [name, f"{record['recall@1']:.2f}", "/", f"{record['ap']:.2f}"]


@pytest.mark.slow
def test_mode_all_skips_the_street_directions_the_split_lacks(teacher, university_root, tmp_path):
    test = street_split(university_root, tmp_path / "test", "query_street")
    run = fresh(teacher, tmp_path)
    stdout = run_cli("--name", run.name, "--checkpoint_dir", run.parent, "--test_dir", test, "--mode", "all")
    assert f"note: {test} has no gallery_street; --mode all skips Satellite->Street, Drone->Street" in stdout
    results = json.loads((run / "results.json").read_text())
    assert sorted(results) == sorted(key(NAMES[mode]) for mode in (1, 2, 3, 6))


@pytest.mark.slow
def test_single_street_mode(teacher, university_root, tmp_path):
    test = street_split(university_root, tmp_path / "test", "gallery_street")
    run = fresh(teacher, tmp_path)
    stdout = run_cli("--name", run.name, "--checkpoint_dir", run.parent, "--test_dir", test, "--mode", "5",
                     "--export_mat")
    assert "University-1652 Drone->Street:" in stdout and "summary" not in stdout
    assert sorted(json.loads((run / "results.json").read_text())) == [key("Drone->Street")]
    assert (run / "pytorch_result.mat").is_file()


@pytest.mark.slow
def test_mode_all_on_sues_is_satellite_and_drone(sues_root, tmp_path):
    torch.manual_seed(4)
    run = write_run(tmp_path / "checkpoints" / "sues", "mccg_convnext_atto", dataset="sues", altitude=150)
    stdout = run_cli("--name", "sues", "--checkpoint_dir", run.parent, "--test_dir", sues_root / "test", "--mode",
                     "all", "--multi")
    assert "skips" not in stdout  # no street direction is said to be skipped: SUES-200 has none
    results = json.loads((run / "results.json").read_text())
    assert sorted(results) == sorted(f"sues/150/{direction}/last.pth/{SIZE}x{SIZE}/flip/float/cpu-fp32" for direction
                                     in ("Satellite->Drone", "Drone->Satellite", "Drone->Satellite/multi-query"))
    assert "SUES-200 summary" in stdout  # three results: the table


def test_street_modes_on_sues_and_missing_street_folders_are_one_line_errors(capsys, teacher, university_root,
                                                                             sues_root, tmp_path):
    sues_run = write_run(tmp_path / "sues", "mccg_convnext_atto", dataset="sues", altitude=150)
    for mode in ("3", "4", "5", "6"):
        assert_test_cli_error(capsys, ["--name", sues_run.name, "--checkpoint_dir", tmp_path, "--test_dir",
                                       sues_root / "test", "--mode", mode], f"--mode {mode}",
                              "SUES-200 has no street view")
    assert_test_cli_error(capsys, ["--name", teacher.name, "--checkpoint_dir", teacher.parent, "--test_dir",
                                   sues_root / "test", "--mode", "6"], "SUES-200 has no street view")
    test = street_split(university_root, tmp_path / "test")
    assert_test_cli_error(capsys, ["--name", teacher.name, "--checkpoint_dir", teacher.parent, "--test_dir", test,
                                   "--mode", "3"], test / "query_street", "not found")
    assert not (teacher / "results.json").exists()
