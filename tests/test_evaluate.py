"""Evaluation: feature extraction, the retrieval picture and test.py end to end on tiny data."""
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from datasets.retrieval import build_test_sets
from datasets.synthetic import generate_sues
from models import build_model
from runs.packed import ENGINES, export_packed
from utils.files import save_checkpoint
from evaluation.features import extract_features, fuse_branches
from evaluation.metrics import METRIC_NAMES, evaluate_retrieval, evaluate_retrieval_loop, format_metrics
from runs.checkpoints import load_trained_model
from evaluation.records import latest_record
from evaluation.visualize import FRAME, GAP, MATCH, MISTAKE, grid_size, save_retrieval_grid, top_gallery
from helpers import REPO
from helpers.evaluation_cli import (CLI, MODEL, NUM_CLASSES, SIZE, ToyBranchNet, assert_test_cli_error,
                                    run_cli, write_opts, write_run)

DIRECTIONS = ("Satellite->Drone", "Drone->Satellite")  # --mode 1, --mode 2
FILE_TAGS = {"Satellite->Drone": "satellite_to_drone", "Drone->Satellite": "drone_to_satellite"}
FOLDERS = {"Satellite->Drone": ("query_satellite", "gallery_drone"),
           "Drone->Satellite": ("query_drone", "gallery_satellite")}


def count_images(root, folder) -> int:
    return len(list((root / "test" / folder).glob("*/*")))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.manual_seed(0)
    return write_run(tmp_path_factory.mktemp("checkpoints") / "tiny")


@pytest.fixture(scope="module")
def evaluated(run_dir, university_root):
    """The run evaluated in both directions with .mat export and a 2-query picture."""
    stdout = run_cli("--name", run_dir.name, "--checkpoint_dir", run_dir.parent, "--test_dir",
                     university_root / "test", "--mode", "both", "--export_mat", "--visualize", 2)
    return run_dir, stdout, json.loads((run_dir / "results.json").read_text())


# ----------------------------------------------------------------------------- features


def test_extract_features_adds_the_flipped_image_and_fuses_branches():
    torch.manual_seed(0)
    model = ToyBranchNet()
    images, labels = torch.randn(7, 3, 8, 10), torch.tensor([3, 1, 4, 1, 5, 9, 2])
    features, out_labels = extract_features(model, DataLoader(TensorDataset(images, labels), batch_size=3),
                                            "cpu")
    with torch.no_grad():
        summed = model(images) + model(images.flip(3))
    branches = [summed[..., k] / summed[..., k].norm(dim=1, keepdim=True) / math.sqrt(3) for k in range(3)]
    manual = torch.stack(branches, dim=-1).reshape(7, 12)
    assert torch.allclose(features, manual, atol=1e-6)
    assert torch.equal(out_labels, labels)
    assert torch.allclose(features.norm(dim=1), torch.ones(7), atol=1e-6)
    assert not torch.allclose(model(images), model(images.flip(3)))  # so the flip matters

    unflipped, _ = extract_features(model, DataLoader(TensorDataset(images, labels), batch_size=4), "cpu",
                                    flip=False)
    assert torch.allclose(unflipped, fuse_branches(model(images).detach()), atol=1e-6)
    assert not torch.allclose(unflipped, features, atol=1e-3)


def test_fuse_branches_gives_every_branch_equal_weight():
    fused = fuse_branches(torch.randn(5, 512, 3) * torch.tensor([1.0, 30.0, 0.01]))
    blocks = fused.view(5, 512, 3)
    assert torch.allclose(blocks.norm(dim=1), torch.full((5, 3), 1 / math.sqrt(3)), atol=1e-6)
    assert torch.allclose(fused.norm(dim=1), torch.ones(5), atol=1e-6)


# ----------------------------------------------------------------------------- picture


def test_retrieval_grid_frames_matches_green_and_mistakes_red(tmp_path):
    image = tmp_path / "img.png"
    Image.new("RGB", (40, 30), (128, 128, 128)).save(image)
    gallery_features = torch.tensor([[1.0], [3.0], [2.0], [5.0], [4.0]])
    gallery_labels = torch.tensor([7, 8, -1, 7, 9])
    # Ranking for a positive query, junk left out: items 3 (7), 4 (9), 1 (8), 0 (7).
    assert top_gallery(torch.tensor([[1.0]]), gallery_features, gallery_labels, 10).tolist() == [[3, 4, 1, 0]]
    path = save_retrieval_grid(tmp_path / "grid.png", [str(image)] * 2, torch.tensor([7, 8]),
                               torch.tensor([[1.0], [1.0]]), [str(image)] * 5, gallery_labels,
                               gallery_features, num_queries=5, top=3, tile=32)
    picture = Image.open(path).convert("RGB")
    assert picture.size == grid_size(2, 4, 32) == (4 * 38 + GAP, 2 * 38 + GAP)
    expected = {0: [MATCH, MISTAKE, MISTAKE], 1: [MISTAKE, MISTAKE, MATCH]}  # query labels 7 and 8
    for row, colours in expected.items():
        for column, colour in enumerate(colours, start=1):
            # bottom-right corner of the frame, clear of the caption
            x = GAP + column * (32 + GAP) + 32 - FRAME // 2 - 1
            y = GAP + row * (32 + GAP) + 32 - FRAME // 2 - 1
            assert picture.getpixel((x, y)) == colour, (row, column)


# ----------------------------------------------------------------------------- test.py


@pytest.mark.slow
def test_results_json_holds_both_directions(evaluated, university_root):
    _, stdout, results = evaluated
    assert sorted(results) == sorted(f"university/{d}/last.pth/{SIZE}x{SIZE}/flip/float/cpu-fp32" for d in DIRECTIONS)
    for direction, (query_folder, gallery_folder) in FOLDERS.items():
        entry = latest_record(results, "university", direction)
        assert entry["recall@1"] <= entry["recall@5"] <= entry["recall@10"], entry
        assert entry["num_queries"] == count_images(university_root, query_folder)
        assert entry["num_gallery"] == count_images(university_root, gallery_folder)
        assert (entry["checkpoint"], entry["epoch"], entry["h"], entry["flip"]) == ("last.pth", 4, SIZE, True)
        assert (entry["engine"], entry["precision"], entry["device"]) == ("float", "fp32", "cpu")
        assert entry["test_dir"] == str((university_root / "test").resolve()) and entry["time"]
        assert format_metrics(entry) in stdout


@pytest.mark.slow
def test_results_equal_metrics_of_directly_computed_features(evaluated, university_root):
    run_dir, _, results = evaluated
    model, _, _ = load_trained_model(run_dir)
    for mode, direction in enumerate(DIRECTIONS, start=1):
        query_set, gallery_set = build_test_sets(university_root / "test", "university", None, mode, SIZE, SIZE)
        query_f, query_l = extract_features(model, DataLoader(query_set, batch_size=32), "cpu")
        gallery_f, gallery_l = extract_features(model, DataLoader(gallery_set, batch_size=32), "cpu")
        direct = evaluate_retrieval(query_f, query_l, gallery_f, gallery_l)
        recorded = latest_record(results, "university", direction)
        exported = scipy.io.loadmat(run_dir / f"pytorch_result_{FILE_TAGS[direction]}.mat")
        assert np.allclose(exported["query_f"], query_f.numpy(), atol=1e-6)
        assert np.allclose(exported["gallery_f"], gallery_f.numpy(), atol=1e-6)
        for name in METRIC_NAMES:
            assert recorded[name] == pytest.approx(direct[name], abs=1e-6), (direction, name)


@pytest.mark.slow
def test_mat_export_is_readable_and_matches_the_reference_metrics(evaluated, university_root):
    run_dir, _, results = evaluated
    for direction, (query_folder, gallery_folder) in FOLDERS.items():
        mat = scipy.io.loadmat(run_dir / f"pytorch_result_{FILE_TAGS[direction]}.mat")
        num_query = count_images(university_root, query_folder)
        num_gallery = count_images(university_root, gallery_folder)
        assert mat["query_f"].shape == (num_query, 1536) and mat["gallery_f"].shape == (num_gallery, 1536)
        assert mat["query_label"].shape == (1, num_query) and mat["gallery_label"].shape == (1, num_gallery)
        assert len(mat["query_path"]) == num_query and len(mat["gallery_path"]) == num_gallery
        assert query_folder in mat["query_path"][0] and gallery_folder in mat["gallery_path"][0]
        assert np.allclose(np.linalg.norm(mat["query_f"], axis=1), 1.0, atol=1e-5)
        reference = evaluate_retrieval_loop(mat["query_f"], mat["query_label"][0], mat["gallery_f"],
                                            mat["gallery_label"][0])
        for name in METRIC_NAMES:
            assert latest_record(results, "university", direction)[name] == pytest.approx(reference[name], abs=1e-9)


@pytest.mark.slow
def test_visualization_png_has_one_row_per_query(evaluated, university_root):
    run_dir = evaluated[0]
    for direction, (_, gallery_folder) in FOLDERS.items():
        gallery_size = count_images(university_root, gallery_folder)
        with Image.open(run_dir / f"retrieval_{FILE_TAGS[direction]}.png") as picture:
            assert picture.size == grid_size(2, 1 + min(10, gallery_size))


@pytest.mark.slow
def test_single_direction_writes_pytorch_result_and_keeps_earlier_results(university_root, tmp_path):
    run = write_run(tmp_path / "teacher", "mccg_convnext_atto")
    (run / "results.json").write_text(json.dumps({"sues/150/Drone->Satellite": {"ap": 1.0},
                                                  "university/Drone->Satellite": {"ap": -1.0}}))
    stdout = run_cli("--name", "teacher", "--checkpoint_dir", tmp_path, "--test_dir", university_root / "test",
                     "--mode", "2", "--export_mat")
    results = json.loads((run / "results.json").read_text())
    new_key = f"university/Drone->Satellite/last.pth/{SIZE}x{SIZE}/flip/float/cpu-fp32"
    assert sorted(results) == ["sues/150/Drone->Satellite", "university/Drone->Satellite", new_key]
    assert results["sues/150/Drone->Satellite"] == {"ap": 1.0}
    assert results["university/Drone->Satellite"] == {"ap": -1.0}  # an earlier record, kept beside
    mat = scipy.io.loadmat(run / "pytorch_result.mat")
    reference = evaluate_retrieval_loop(mat["query_f"], mat["query_label"][0], mat["gallery_f"],
                                        mat["gallery_label"][0])
    assert latest_record(results, "university", "Drone->Satellite")["ap"] == pytest.approx(reference["ap"], abs=1e-9)
    assert "Drone->Satellite" in stdout and "Satellite->Drone" not in stdout
    assert not list(run.glob("pytorch_result_*.mat"))


@pytest.mark.slow
def test_sues_all_altitudes_prints_a_table(tmp_path):
    generate_sues(tmp_path / "sues", places=4, train_places=2, drones_per_place=2, image_size=32, seed=1)
    torch.manual_seed(1)
    # A ConvNeXt teacher run: test.py evaluates teachers too, and it is fast at four altitudes.
    run = write_run(tmp_path / "checkpoints" / "sues", "mccg_convnext_atto", dataset="sues", altitude=150)
    stdout = run_cli("--name", "sues", "--checkpoint_dir", tmp_path / "checkpoints", "--test_dir",
                     tmp_path / "sues" / "test", "--altitude", "all", "--mode", "2")
    results = json.loads((run / "results.json").read_text())
    assert sorted(results) == [f"sues/{a}/Drone->Satellite/last.pth/{SIZE}x{SIZE}/flip/float/cpu-fp32"
                               for a in (150, 200, 250, 300)]
    table = stdout[stdout.index("SUES-200 summary"):].splitlines()
    for altitude, line in zip((150, 200, 250, 300), table[2:]):
        entry = latest_record(results, "sues", "Drone->Satellite", altitude)
        assert line.split() == [str(altitude), "m", f"{entry['recall@1']:.2f}", "/", f"{entry['ap']:.2f}"]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.slow
def test_run_without_opts_is_one_line_error_from_the_command_line(tmp_path, university_root):
    (tmp_path / "empty").mkdir()
    done = subprocess.run([sys.executable, "test.py", "--name", "empty", "--checkpoint_dir", str(tmp_path),
                           "--test_dir", str(university_root / "test")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: ") and "opts.yaml" in done.stderr


def test_missing_checkpoint(capsys, run_dir, university_root):
    assert_test_cli_error(capsys, ["--name", run_dir.name, "--checkpoint_dir", run_dir.parent, "--test_dir",
                                   university_root / "test", "--which_epoch", 7], "net_007.pth", "does not exist")


def test_truncated_checkpoint(capsys, tmp_path, university_root):
    run = write_opts(tmp_path / "cut")
    save_checkpoint({"model": {"w": torch.randn(64, 64)}}, run / "last.pth")
    data = (run / "last.pth").read_bytes()
    (run / "last.pth").write_bytes(data[: len(data) // 2])
    assert_test_cli_error(capsys, ["--name", "cut", "--checkpoint_dir", tmp_path, "--test_dir",
                                   university_root / "test"], run / "last.pth", "truncated")


def test_checkpoint_of_another_model(capsys, tmp_path, university_root):
    other = build_model("mccg_convnext_atto", NUM_CLASSES).state_dict()
    write_run(tmp_path / "other", state_dict=other)
    assert_test_cli_error(capsys, ["--name", "other", "--checkpoint_dir", tmp_path, "--test_dir",
                                   university_root / "test"], "does not match model", MODEL)


def test_test_folder_without_a_view(capsys, run_dir, university_root, tmp_path):
    test_dir = shutil.copytree(university_root / "test", tmp_path / "test",
                               ignore=shutil.ignore_patterns("gallery_drone"))
    assert_test_cli_error(capsys, ["--name", run_dir.name, "--checkpoint_dir", run_dir.parent, "--test_dir",
                                   test_dir], test_dir / "gallery_drone")


def test_zero_queries(capsys, run_dir, university_root, tmp_path):
    test_dir = shutil.copytree(university_root / "test", tmp_path / "test")
    shutil.rmtree(test_dir / "query_drone")
    (test_dir / "query_drone").mkdir()
    assert_test_cli_error(capsys, ["--name", run_dir.name, "--checkpoint_dir", run_dir.parent, "--test_dir",
                                   test_dir, "--mode", "2"], test_dir / "query_drone")


def test_altitude_for_a_university_run(capsys, run_dir, university_root):
    assert_test_cli_error(capsys, ["--name", run_dir.name, "--checkpoint_dir", run_dir.parent, "--test_dir",
                                   university_root / "test", "--altitude", "150"], "--altitude", "SUES-200")


def test_damaged_results_file(capsys, run_dir, university_root, tmp_path):
    run = write_opts(tmp_path / "damaged")
    (run / "last.pth").symlink_to(run_dir / "last.pth")
    (run / "results.json").write_text('{"university/Drone->Satellite": ')
    assert_test_cli_error(capsys, ["--name", "damaged", "--checkpoint_dir", tmp_path, "--test_dir",
                                   university_root / "test"], run / "results.json", "not valid JSON")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_requested_without_gpu(capsys, run_dir, university_root):
    with pytest.raises(SystemExit) as exit_info:
        CLI.main(["--name", run_dir.name, "--checkpoint_dir", str(run_dir.parent), "--test_dir",
                  str(university_root / "test"), "--device", "cuda"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: device 'cuda' was requested but no CUDA device "
                                                "is available; use device 'cpu'")


@pytest.mark.slow
def test_packed_file_on_both_engines_gives_the_checkpoints_metrics_side_by_side(evaluated, university_root,
                                                                                tmp_path):
    run_dir, _, results = evaluated
    model, opts, _ = load_trained_model(run_dir)
    packed = tmp_path / "tiny_packed.pt"
    export_packed(model, opts["model"], opts["model_options"], opts["num_classes"],
                  {"h": SIZE, "w": SIZE, "dataset": "university", "altitude": None}, packed)
    for engine in ENGINES:
        stdout = run_cli("--packed", packed, "--engine", engine, "--test_dir", university_root / "test", "--mode",
                         "both")
        assert "tiny_packed.pt" in stdout
    packed_results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(packed_results) == sorted(f"university/{d}/tiny_packed.pt/{SIZE}x{SIZE}/flip/packed-{e}/cpu-fp32"
                                            for d in DIRECTIONS for e in ENGINES)
    # The fused engine rounds differently: on this untrained network, whose 5 gallery scores nearly
    # tie, that reorders some rankings; its agreement is measured in test_fused.py and fused_agreement.
    for direction in DIRECTIONS:
        reference = latest_record(results, "university", direction)
        for engine in (e for e in ENGINES if e != "fused"):
            entry = latest_record(packed_results, "university", direction, engine=f"packed-{engine}")
            assert all(entry[name] == reference[name] for name in METRIC_NAMES), (direction, engine)


@pytest.mark.slow
def test_evaluating_at_another_size_adds_a_record_and_says_so(university_root, tmp_path):
    run = write_run(tmp_path / "teacher", "mccg_convnext_atto")
    run_cli("--name", "teacher", "--checkpoint_dir", tmp_path, "--test_dir", university_root / "test", "--mode", "2")
    stdout = run_cli("--name", "teacher", "--checkpoint_dir", tmp_path, "--test_dir", university_root / "test",
                     "--mode", "2", "--h", "32", "--w", "32")
    assert f"note: evaluating at 32x32; the network was trained at {SIZE}x{SIZE}" in stdout
    results = json.loads((run / "results.json").read_text())
    assert sorted(results) == [f"university/Drone->Satellite/last.pth/{size}/flip/float/cpu-fp32"
                               for size in ("32x32", f"{SIZE}x{SIZE}")]
    assert latest_record(results, "university", "Drone->Satellite", h=32)["w"] == 32


def test_name_and_packed_are_exclusive(capsys, run_dir, university_root):
    assert_test_cli_error(capsys, ["--test_dir", university_root / "test"], "exactly one of --name")
    assert_test_cli_error(capsys, ["--name", "x", "--packed", "y.pt", "--test_dir", university_root / "test"],
                          "exactly one of --name")
