"""Gallery indexes: faiss search against brute force, save/reload, and search.py end to end with its
one-line refusals, on tiny synthetic data."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import search
from runs.claim import save_opts
from evaluation.binary_codes import hamming_distances, pack_signs
from gallery import index as gallery_index
from gallery.images import RunDescriber, list_images
from models import build_model
from utils.errors import UserError
from utils.files import save_checkpoint

MODEL, SIZE = "bicrossnet_bnext_tiny", 64


def random_features(count, dims=64, seed=0):
    return torch.nn.functional.normalize(torch.randn(count, dims, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_exact_float_and_binary_search_match_brute_force(tmp_path):
    gallery, queries = random_features(300), random_features(9, seed=1)
    names = [f"tile{i}" for i in range(300)]
    for descriptor in ("float", "binary"):
        built = gallery_index.build(gallery, names, descriptor, "exact", {"run": "r"})
        path = gallery_index.save(built, tmp_path / f"{descriptor}.npz")
        loaded = gallery_index.load(path)
        assert loaded.names == names and loaded.meta["descriptor"] == descriptor and loaded.meta["dims"] == 64
        ids, scores = gallery_index.search(loaded, queries, 5)
        if descriptor == "float":
            expected = (queries @ gallery.T).numpy()
            assert np.allclose(scores, np.sort(expected, axis=1)[:, ::-1][:, :5], atol=1e-5)
            assert (ids[:, 0] == expected.argmax(1)).all()
        else:
            distances = hamming_distances(pack_signs(queries), pack_signs(gallery))
            assert (scores == np.sort(distances, axis=1)[:, :5]).all()
            assert (np.take_along_axis(distances, ids, axis=1) == scores).all()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary file


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_binary_index_finds_the_exact_neighbours_at_full_effort(tmp_path, kind):
    gallery, queries = random_features(800, dims=128), random_features(20, dims=128, seed=3)
    built = gallery_index.build(gallery, [str(i) for i in range(800)], "binary", kind, {}, nlist=8)
    loaded = gallery_index.load(gallery_index.save(built, tmp_path / "g.npz"))
    gallery_index.set_search_effort(loaded, nprobe=8, ef_search=800)  # every list / a beam over all items
    _, scores = gallery_index.search(loaded, queries, 3)
    exact = np.sort(hamming_distances(pack_signs(queries), pack_signs(gallery)), axis=1)[:, :3]
    assert (scores == exact).all()
    assert loaded.meta["index"] == kind


def test_float_descriptors_have_no_approximate_index():
    with pytest.raises(ValueError, match="binary descriptors"):
        gallery_index.build(random_features(5), list("abcde"), "float", "hnsw", {})


def test_files_that_are_not_indexes_are_refused(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "other.npz", index=np.zeros(3, np.uint8), names=np.array(["a"]),
             meta=np.frombuffer(b'{"format": "something else"}', np.uint8))
    np.savez(tmp_path / "pickled.npz", index=np.array([{"a": 1}], dtype=object), names=np.array(["a"]),
             meta=np.zeros(1, np.uint8))
    for name in ("text.npz", "objects.npy", "other.npz", "pickled.npz", "missing.npz"):
        with pytest.raises(UserError, match="not a gallery index|does not exist"):
            gallery_index.load(tmp_path / name)


def write_run(run_dir: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_opts(run_dir, {"model": MODEL, "model_options": {}, "num_classes": 6, "dataset": "university",
                        "h": SIZE, "w": SIZE})
    save_checkpoint({"model": build_model(MODEL, 6).state_dict(), "epoch": 1}, run_dir / "last.pth")
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return write_run(root / "a", 0), write_run(root / "b", 1)


def run_search(*argv) -> None:
    assert search.main([*map(str, argv), "--batchsize", "16"]) == 0


def refusal(capsys, *argv) -> str:
    capsys.readouterr()  # drop what earlier commands printed
    with pytest.raises(SystemExit) as stop:
        search.main(list(map(str, argv)))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_build_save_reload_query_end_to_end(runs, university_root, tmp_path, capsys):
    gallery_dir = university_root / "test" / "gallery_satellite"
    query_dir = university_root / "test" / "query_drone" / "0001"  # one place's drone images
    out, index_file = tmp_path / "matches.json", tmp_path / "tiles.npz"
    run_search("build", "--run", runs[0], "--images", gallery_dir, "--out", index_file, "--descriptor", "binary",
               "--no_flip")
    run_search("query", "--index", index_file, "--images", query_dir, "--top_k", "3", "--out", out)
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    query_paths, query_names = list_images(query_dir)
    gallery_paths, gallery_names = list_images(gallery_dir)
    assert [r["query"] for r in saved["results"]] == query_names and saved["score"] == "hamming"
    # brute force with the same run's descriptors
    describer = RunDescriber(runs[0], flip=False)  # the index records --no_flip, and queries follow it
    distances = hamming_distances(pack_signs(describer.describe(query_paths)),
                                  pack_signs(describer.describe(gallery_paths)))
    for row, result in zip(distances, saved["results"]):
        assert [m["hamming"] for m in result["matches"]] == sorted(row.tolist())[:3]
        assert all(row[gallery_names.index(m["name"])] == m["hamming"] for m in result["matches"])
    assert f"{query_names[0]}: {saved['results'][0]['matches'][0]['name']}" in printed
    meta = gallery_index.load(index_file).meta
    assert (meta["run"], meta["model"], meta["h"], meta["w"], meta["descriptor"]) == ("a", MODEL, SIZE, SIZE, "binary")

    # --append grows the index with the same run and kind
    run_search("build", "--run", runs[0], "--images", query_paths[0], "--out", index_file, "--descriptor", "binary",
               "--append", "--no_flip")
    grown = gallery_index.load(index_file)
    assert grown.names == gallery_names + [query_paths[0].name] and grown.index.ntotal == len(gallery_names) + 1

    # refusals: wrong run, mixed kinds, empty folder, not an index, approximate float index
    assert "did not make" in refusal(capsys, "query", "--index", index_file, "--images", query_dir, "--run", runs[1])
    assert "mix" in refusal(capsys, "build", "--run", runs[0], "--images", gallery_dir, "--out", index_file,
                            "--append")
    assert "is not the run of" in refusal(capsys, "build", "--run", runs[1], "--images", gallery_dir, "--out",
                                          index_file, "--append", "--descriptor", "binary")
    (tmp_path / "empty").mkdir()
    assert "no image" in refusal(capsys, "build", "--run", runs[0], "--images", tmp_path / "empty", "--out",
                                 tmp_path / "x.npz")
    assert "not a gallery index" in refusal(capsys, "query", "--index", runs[0] / "opts.yaml", "--images", query_dir)
    assert "binary descriptors" in refusal(capsys, "build", "--run", runs[0], "--images", gallery_dir, "--out",
                                           tmp_path / "x.npz", "--index", "ivf")
    assert not (tmp_path / "x.npz").exists() and gallery_index.load(index_file).names == grown.names
