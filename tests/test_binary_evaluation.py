"""``test.py --descriptor binary`` end to end: every direction, both engines of a packed file, the
metrics of a brute-force Hamming ranking of the exported descriptors, and records kept apart from
the float ones."""
import json

import numpy as np
import pytest
import scipy.io
import torch

from evaluation.binary_codes import pack_signs
from evaluation.metrics import METRIC_NAMES, evaluate_retrieval
from evaluation.records import latest_record
from runs.checkpoints import load_trained_model
from runs.packed import ENGINES, export_packed

from helpers.evaluation_cli import SIZE, run_cli as run_test_py, write_run
from helpers.hamming import brute_metrics


DIRECTIONS = {"Satellite->Drone": "satellite_to_drone", "Drone->Satellite": "drone_to_satellite",
              "Street->Satellite": "street_to_satellite", "Satellite->Street": "satellite_to_street",
              "Drone->Street": "drone_to_street", "Street->Drone": "street_to_drone"}


def run_cli(*argv) -> str:
    """test.py in this process, without flip TTA (half the time; the descriptors are compared, not scored)."""
    return run_test_py(*argv, "--no_flip")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.manual_seed(0)
    return write_run(tmp_path_factory.mktemp("checkpoints") / "tiny")


def test_binary_descriptors_in_every_direction_match_brute_force_and_keep_float_results(run_dir, university_root):
    common = ("--name", run_dir.name, "--checkpoint_dir", run_dir.parent, "--test_dir", university_root / "test",
              "--mode", "all")
    run_cli(*common)
    float_results = json.loads((run_dir / "results.json").read_text())
    stdout = run_cli(*common, "--descriptor", "binary", "--export_mat")
    assert "binary descriptors" in stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert {k: v for k, v in results.items() if not k.endswith("/binary")} == float_results  # float kept as it was
    assert sorted(k for k in results if k.endswith("/binary")) == sorted(
        f"university/{d}/last.pth/{SIZE}x{SIZE}/noflip/float/cpu-fp32/binary" for d in DIRECTIONS)
    for direction, tag in DIRECTIONS.items():
        mat = scipy.io.loadmat(run_dir / f"pytorch_result_{tag}.mat")
        query_labels, gallery_labels = mat["query_label"][0], mat["gallery_label"][0]
        expected = brute_metrics(pack_signs(mat["query_f"]), query_labels, pack_signs(mat["gallery_f"]), gallery_labels)
        as_float = evaluate_retrieval(mat["query_f"], query_labels, mat["gallery_f"], gallery_labels)
        binary = latest_record(results, "university", direction, descriptor="binary")
        floats = latest_record(results, "university", direction)
        for name in METRIC_NAMES:
            assert binary[name] == pytest.approx(expected[name], abs=1e-9), (direction, name)
            assert floats[name] == pytest.approx(as_float[name], abs=1e-6), (direction, name)
        assert binary["descriptor"] == "binary" and floats.get("descriptor", "float") == "float"


def test_binary_descriptors_on_both_engines_of_a_packed_file(run_dir, university_root, tmp_path):
    model, opts, _ = load_trained_model(run_dir)
    packed = tmp_path / "tiny_packed.pt"
    export_packed(model, opts["model"], opts["model_options"], opts["num_classes"],
                  {"h": SIZE, "w": SIZE, "dataset": "university", "altitude": None}, packed)
    for engine in ENGINES:
        run_cli("--packed", packed, "--engine", engine, "--test_dir", university_root / "test", "--mode", "both",
                "--descriptor", "binary")
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(results) == sorted(f"university/{d}/tiny_packed.pt/{SIZE}x{SIZE}/noflip/packed-{e}/cpu-fp32/binary"
                                     for d in ("Satellite->Drone", "Drone->Satellite") for e in ENGINES)
    for direction in ("Satellite->Drone", "Drone->Satellite"):
        by_engine = [latest_record(results, "university", direction, engine=f"packed-{e}", descriptor="binary")
                     for e in ENGINES]
        assert all(0 <= entry[name] <= 100 for entry in by_engine for name in METRIC_NAMES)
        # the exact engines compute the same network: their codes, hence metrics, agree (the fused
        # engine rounds differently, which can flip near-zero signs of this untrained network)
        exact = [entry for entry, e in zip(by_engine, ENGINES) if e != "fused"]
        assert all(np.isclose(exact[0][name], other[name]) for other in exact[1:] for name in METRIC_NAMES)
