"""Multi-scale test (--ms) and multiple queries (--multi), checked against direct computation."""
import json
import math
import shutil

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from datasets.retrieval import build_test_sets
from evaluation.features import check_scales, extract_features, fuse_branches, pool_queries, scaled_size
from evaluation.metrics import METRIC_NAMES, evaluate_retrieval, evaluate_retrieval_loop
from evaluation.records import latest_record, record_key
from runs.checkpoints import load_trained_model
from helpers.evaluation_cli import SIZE, ToyBranchNet, assert_test_cli_error, run_cli, write_run

BASE = f"last.pth/{SIZE}x{SIZE}"


class ShapeRecorder(ToyBranchNet):
    """ToyBranchNet that remembers the input sizes it was run at."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return super().forward(x)


def test_multi_scale_sums_the_network_at_each_resized_input():
    torch.manual_seed(0)
    model = ShapeRecorder()
    images, labels = torch.randn(5, 3, 8, 10), torch.arange(5)
    loader = DataLoader(TensorDataset(images, labels), batch_size=5)
    features, _ = extract_features(model, loader, "cpu", scales=(1, 0.5))
    assert model.sizes == [(8, 10), (4, 5), (8, 10), (4, 5)]
    # Bilinear resizing by 1/2 without corner alignment averages each 2x2 block.
    with torch.no_grad():
        summed = sum(model(view) + model(F.avg_pool2d(view, 2)) for view in (images, images.flip(3)))
    branches = [summed[..., k] / summed[..., k].norm(dim=1, keepdim=True) / math.sqrt(3) for k in range(3)]
    assert torch.allclose(features, torch.stack(branches, dim=-1).reshape(5, 12), atol=1e-6)
    single, _ = extract_features(model, loader, "cpu", flip=False)
    assert not torch.allclose(single, features, atol=1e-3)  # the second scale changes the descriptors

    unflipped, _ = extract_features(model, loader, "cpu", flip=False, scales=(1.5,))
    with torch.no_grad():
        resized = F.interpolate(images, scale_factor=1.5, mode="bilinear", align_corners=False)
        assert torch.allclose(unflipped, fuse_branches(model(resized)), atol=1e-6)
    assert model.sizes[-2] == (12, 15) == scaled_size(8, 10, 1.5)


@pytest.mark.parametrize("h, w, scale", [(256, 256, 1.1), (256, 192, 1.125), (64, 64, 0.7), (37, 53, 1.3)])
def test_scaled_size_is_the_size_interpolation_gives(h, w, scale):
    resized = F.interpolate(torch.zeros(1, 1, h, w), scale_factor=scale, mode="bilinear", align_corners=False)
    assert tuple(resized.shape[-2:]) == scaled_size(h, w, scale)


@pytest.mark.parametrize("scales", [(), (0,), (1, -1.1), (1, float("nan")), (float("inf"),), (1, 1.0)])
def test_bad_scales_are_value_errors(scales):
    with pytest.raises(ValueError, match="scales="):
        check_scales(scales)


def test_pool_queries_is_the_renormalized_mean_of_each_place():
    torch.manual_seed(1)
    features = F.normalize(torch.randn(7, 6), dim=1)
    labels = torch.tensor([9, 2, 9, 4, 2, 9, 4])
    pooled, places = pool_queries(features, labels)
    assert places.tolist() == [2, 4, 9]
    for row, place in zip(pooled, places.tolist()):
        mean = features[labels == place].mean(0)
        assert torch.allclose(row, mean / mean.norm(), atol=1e-6)


# ----------------------------------------------------------------------------- test.py


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, university_root):
    """A ConvNeXt teacher run evaluated Drone->Satellite four ways: plain, --multi, --ms, --ms with --multi."""
    torch.manual_seed(5)
    run = write_run(tmp_path_factory.mktemp("msmq") / "teacher", "mccg_convnext_atto")
    common = ["--name", run.name, "--checkpoint_dir", run.parent, "--test_dir", university_root / "test",
              "--mode", "2"]
    outputs = [run_cli(*common, "--multi", "--export_mat"), run_cli(*common, "--ms", "1,1.5", "--multi")]
    return run, outputs, json.loads((run / "results.json").read_text())


@pytest.mark.slow
def test_ms_and_multi_records_have_distinct_keys(evaluated):
    _, _, results = evaluated
    assert sorted(results) == sorted(f"university/Drone->Satellite/{query}{BASE}{scales}/flip/float/cpu-fp32"
                                     for query in ("", "multi-query/") for scales in ("", "/ms1,1.5"))
    plain = latest_record(results, "university", "Drone->Satellite")
    assert (plain["query"], plain["scales"]) == ("single", [1.0])
    both = latest_record(results, "university", "Drone->Satellite", query="multi", scales=[1, 1.5])
    assert (both["query"], both["scales"]) == ("multi", [1.0, 1.5])


@pytest.mark.slow
def test_multi_query_metrics_equal_those_of_descriptors_pooled_by_hand(evaluated, university_root):
    run, outputs, results = evaluated
    mat = scipy.io.loadmat(run / "pytorch_result.mat")  # the single-query descriptors of the first call
    query_f, query_labels = mat["query_f"], mat["query_label"][0]
    places = sorted(set(query_labels.tolist()))
    pooled = np.stack([query_f[query_labels == place].mean(0) for place in places])
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    reference = evaluate_retrieval_loop(pooled, places, mat["gallery_f"], mat["gallery_label"][0])
    record = latest_record(results, "university", "Drone->Satellite", query="multi")
    assert (record["num_queries"], record["num_query_images"]) == (len(places), len(query_labels))
    assert len(places) < len(query_labels)  # several drone queries a place, so pooling does something
    for name in METRIC_NAMES:
        assert record[name] == pytest.approx(reference[name], abs=1e-6), name
    assert f"Drone->Satellite multi-query: {len(places)} places" in outputs[0]
    assert "summary" not in outputs[0]  # two results: no table (it is for more than two)


@pytest.mark.slow
def test_ms_metrics_equal_those_of_directly_computed_multi_scale_features(evaluated, university_root):
    run, outputs, results = evaluated
    model, _, _ = load_trained_model(run)
    query_set, gallery_set = build_test_sets(university_root / "test", "university", None, 2, SIZE, SIZE)
    sides = (1, math.sqrt(1.5))  # --ms 1,1.5 are MCCG's area ratios: sides resized by their square roots
    query_f, query_l = extract_features(model, DataLoader(query_set, batch_size=32), "cpu", scales=sides)
    gallery_f, gallery_l = extract_features(model, DataLoader(gallery_set, batch_size=32), "cpu", scales=sides)
    direct = {"single": evaluate_retrieval(query_f, query_l, gallery_f, gallery_l),
              "multi": evaluate_retrieval(*pool_queries(query_f, query_l), gallery_f, gallery_l)}
    for query, metrics in direct.items():
        record = latest_record(results, "university", "Drone->Satellite", query=query, scales=[1, 1.5])
        for name in METRIC_NAMES:
            assert record[name] == pytest.approx(metrics[name], abs=1e-6), (query, name)
    assert "scales 1,1.5" in outputs[1]


def test_record_keys_of_the_standard_protocol_are_unchanged_and_old_records_read():
    record = {"dataset": "sues", "altitude": 150, "direction": "Drone->Satellite", "checkpoint": "last.pth",
              "h": 256, "w": 256, "flip": True, "engine": "float", "device": "cuda (H100)", "precision": "fp32"}
    old_key = "sues/150/Drone->Satellite/last.pth/256x256/flip/float/cuda-fp32"
    assert record_key(record) == record_key(dict(record, query="single", scales=[1.0])) == old_key
    assert record_key(dict(record, query="multi", scales=[1.0, 1.1])) == \
        "sues/150/Drone->Satellite/multi-query/last.pth/256x256/ms1,1.1/flip/float/cuda-fp32"
    results = {old_key: dict(record, ap=1.0, time="1"),
               "sues/150/Drone->Satellite": {"ap": 2.0},  # keyed before records named their fields
               record_key(dict(record, scales=[1, 1.1])): dict(record, scales=[1.0, 1.1], ap=3.0, time="2")}
    assert latest_record(results, "sues", "Drone->Satellite", 150)["ap"] == 1.0  # the newest is multi-scale
    assert latest_record(results, "sues", "Drone->Satellite", 150, scales=(1, 1.1))["ap"] == 3.0
    assert latest_record(results, "sues", "Drone->Satellite", 150, query="multi") is None


@pytest.mark.slow
@pytest.mark.parametrize("value", ["0", "-1", "1,,1.1", "abc", "1,1", "nan", "1,inf", ""])
def test_bad_ms_values_are_one_line_errors(capsys, evaluated, university_root, value):
    run = evaluated[0]
    assert_test_cli_error(capsys, ["--name", run.name, "--checkpoint_dir", run.parent, "--test_dir",
                                   university_root / "test", "--ms", value], "--ms", "positive numbers")


@pytest.mark.slow
def test_scaled_size_the_network_cannot_take_is_one_line_error(capsys, evaluated, university_root, tmp_path):
    run = shutil.copytree(evaluated[0], tmp_path / "teacher")
    (run / "results.json").unlink()
    assert_test_cli_error(capsys, ["--name", run.name, "--checkpoint_dir", tmp_path, "--test_dir",
                                   university_root / "test", "--ms", "1,0.0625"], "--ms 0.0625",
                          f"{SIZE}x{SIZE} input resized to 16x16", "cannot take 16x16")
    assert not (run / "results.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["1", "3", "4", "6"])
def test_multi_without_drone_queries_is_refused(capsys, evaluated, university_root, mode):
    run = evaluated[0]
    assert_test_cli_error(capsys, ["--name", run.name, "--checkpoint_dir", run.parent, "--test_dir",
                                   university_root / "test", "--mode", mode, "--multi"], "--multi",
                          f"--mode {mode}", "2, 5, both or all")
