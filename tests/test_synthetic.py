"""Synthetic look-alike datasets: determinism, exact benchmark layouts, and cross-view difficulty."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from datasets import SUES_ALTITUDES
from datasets.synthetic import MANIFEST, generate_sues, generate_university, main

MICRO_UNIVERSITY = dict(train_places=2, test_places=2, distractor_places=1, drones_per_place=2, image_size=48)
MICRO_SUES = dict(places=3, train_places=2, drones_per_place=2, image_size=48, altitudes=(150,))


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def tree_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def pixels(path, size=64):
    return np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR), np.float32)


def colour_histogram(image, bins=8):
    counts, _ = np.histogramdd(image.reshape(-1, 3), bins=bins, range=[(0, 256)] * 3)
    return counts.ravel() / counts.sum()


@pytest.mark.parametrize("generate, spec", [(generate_university, MICRO_UNIVERSITY),
                                            (generate_sues, MICRO_SUES)])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, generate, spec):
    def files(name, seed):
        generate(tmp_path / name, seed=seed, **spec)
        return tree_bytes(tmp_path / name)

    first, second, other = files("a", 3), files("b", 3), files("c", 4)
    assert first == second
    # The seed also picks the places without google images, so compare the files both have.
    shared = [k for k in first.keys() & other.keys() if not k.endswith(MANIFEST)]
    assert len(shared) >= 0.8 * len(first)
    assert all(first[k] != other[k] for k in shared)


def test_university_layout(university_root, university_spec):
    train, test = university_root / "train", university_root / "test"
    n_test, n_train = university_spec["test_places"], university_spec["train_places"]
    drones = [f"image-{k:02d}.jpeg" for k in range(1, university_spec["drones_per_place"] + 1)]
    assert names(train) == ["drone", "google", "satellite", "street"]
    assert names(test) == ["gallery_drone", "gallery_satellite", "query_drone", "query_satellite"]

    test_ids = [f"{i:04d}" for i in range(n_test)]
    assert test_ids[0] == "0000"
    assert names(test / "query_drone") == names(test / "query_satellite") == test_ids
    train_ids = names(train / "satellite")
    assert len(train_ids) == n_train
    assert names(train / "drone") == names(train / "street") == train_ids
    assert not set(train_ids) & set(test_ids)
    gallery = names(test / "gallery_satellite")
    assert names(test / "gallery_drone") == gallery
    distractors = set(gallery) - set(test_ids)
    assert set(test_ids) < set(gallery)
    assert len(distractors) == university_spec["distractor_places"]
    assert not distractors & set(train_ids)
    assert all(re.fullmatch(r"\d{4}", i) for i in train_ids + gallery)

    for cid in train_ids:
        assert names(train / "satellite" / cid) == [f"{cid}.jpg"]
        assert names(train / "drone" / cid) == drones
        assert names(train / "street" / cid)
    for cid in gallery:
        assert names(test / "gallery_satellite" / cid) == [f"{cid}.jpg"]
        assert names(test / "gallery_drone" / cid) == drones
    for cid in test_ids:  # queries are the very files of the test places in the galleries
        for view in ("drone", "satellite"):
            assert tree_bytes(test / f"query_{view}" / cid) == tree_bytes(test / f"gallery_{view}" / cid)

    google = {cid: len(names(train / "google" / cid)) if (train / "google" / cid).is_dir() else 0
              for cid in train_ids}
    assert set(names(train / "google")) <= set(train_ids)
    assert 0 < sum(n == 0 for n in google.values()) < len(train_ids)


def test_sues_layout(sues_root, sues_spec):
    altitudes = [str(a) for a in sues_spec["altitudes"]]
    all_ids = [f"{i:04d}" for i in range(1, sues_spec["places"] + 1)]
    train_ids, test_ids = all_ids[:sues_spec["train_places"]], all_ids[sues_spec["train_places"]:]
    drones = sorted(f"{k}.jpg" for k in range(sues_spec["drones_per_place"]))
    assert names(sues_root / "train") == names(sues_root / "test") == altitudes
    for alt in altitudes:
        train, test = sues_root / "train" / alt, sues_root / "test" / alt
        assert names(train) == ["drone", "satellite"]
        assert names(test) == ["gallery_drone", "gallery_satellite", "query_drone", "query_satellite"]
        assert names(train / "drone") == names(train / "satellite") == train_ids
        assert names(test / "query_drone") == names(test / "query_satellite") == test_ids
        assert names(test / "gallery_drone") == names(test / "gallery_satellite") == all_ids
        for cid in all_ids:
            assert names(test / "gallery_satellite" / cid) == ["0.png"]
            assert names(test / "gallery_drone" / cid) == drones
        for cid in train_ids:  # training places reappear in the galleries as distractors
            assert tree_bytes(train / "drone" / cid) == tree_bytes(test / "gallery_drone" / cid)
    low, high = (sues_root / "test" / alt / "gallery_drone" / "0001" / "0.jpg" for alt in altitudes)
    assert low.read_bytes() != high.read_bytes()
    satellites = {(sues_root / "test" / alt / "gallery_satellite" / "0001" / "0.png").read_bytes()
                  for alt in altitudes}
    assert len(satellites) == 1


def test_summary_and_manifest_match_files(university_root, sues_root):
    for root in (university_root, sues_root):
        manifest = json.loads((root / MANIFEST).read_text())
        for folder, count in manifest["folders"].items():
            classes = list((root / folder).iterdir())
            assert count["classes"] == len(classes)
            assert count["images"] == sum(len(list(c.iterdir())) for c in classes)


def test_images_decode_to_rgb_of_requested_size(university_root, university_spec, sues_root, sues_spec):
    size = university_spec["image_size"]
    assert sues_spec["image_size"] == size
    files = [p for root in (university_root, sues_root) for p in root.rglob("*")
             if p.suffix in (".jpg", ".jpeg", ".png")]
    assert len(files) > 100
    for path in files:
        with Image.open(path) as image:
            assert (image.mode, image.size) == ("RGB", (size, size))


def _drone_satellite_pairs(test_dir):
    satellites = {cid: pixels(next((test_dir / "gallery_satellite" / cid).iterdir()))
                  for cid in names(test_dir / "gallery_satellite")}
    drones = [(cid, pixels(path)) for cid in names(test_dir / "query_drone")
              for path in sorted((test_dir / "query_drone" / cid).iterdir())]
    return satellites, drones


def test_drone_views_are_not_near_copies_of_the_satellite(university_root):
    satellites, drones = _drone_satellite_pairs(university_root / "test")
    own = np.array([np.abs(image - satellites[cid]).mean() for cid, image in drones])
    other = np.array([np.abs(image - sat).mean() for cid, image in drones
                      for c, sat in satellites.items() if c != cid])
    assert own.min() > 8  # a re-encoded or slightly shifted copy stays around 1-5
    # Raw pixels barely tell the own place from the others: matching has to be learned.
    assert own.mean() > 0.7 * other.mean()


def test_drone_colours_match_their_own_place(university_root):
    satellites, drones = _drone_satellite_pairs(university_root / "test")
    histograms = {cid: colour_histogram(sat) for cid, sat in satellites.items()}
    hits = 0
    for cid, image in drones:
        distance = {c: np.abs(colour_histogram(image) - h).sum() for c, h in histograms.items()}
        hits += min(distance, key=distance.get) == cid
    chance = 1 / len(satellites)
    assert hits / len(drones) >= 3 * chance


def test_higher_altitude_sees_more_structure(sues_root, sues_spec):
    def edge_density(path):
        grey = np.asarray(Image.open(path).convert("L"), np.float32)
        gradient = np.abs(np.diff(grey, axis=0))[:, :-1] + np.abs(np.diff(grey, axis=1))[:-1]
        return (gradient > 25).mean()

    def mean_density(altitude):
        folder = sues_root / "test" / str(altitude) / "gallery_drone"
        return np.mean([edge_density(p) for p in folder.rglob("*.jpg")])

    low, high = mean_density(min(sues_spec["altitudes"])), mean_density(max(sues_spec["altitudes"]))
    assert high > 1.2 * low  # wider field of view: more, smaller buildings per pixel


def test_cli_writes_and_summarises(tmp_path, capsys):
    out = tmp_path / "sues"
    argv = ["--layout", "sues", "--out", str(out), "--places", "3", "--train_places", "2", "--drones", "2",
            "--size", "48", "--altitudes", "200"]
    main(argv)
    printed = capsys.readouterr().out
    assert re.search(r"test/200/gallery_drone\s+3 classes\s+6 images", printed)
    assert re.search(r"train/200/satellite\s+2 classes\s+2 images", printed)
    first = tree_bytes(out)
    main(argv)  # regenerating over its own output replaces it
    assert tree_bytes(out) == first


def test_cli_sues_places_alone_trains_on_a_share_of_them(tmp_path):
    out = tmp_path / "sues"
    main(["--layout", "sues", "--out", str(out), "--places", "6", "--drones", "1", "--size", "32",
          "--altitudes", "150"])
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["parameters"]["train_places"] == 4
    assert names(out / "train" / "150" / "drone") == ["0001", "0002", "0003", "0004"]
    assert names(out / "test" / "150" / "query_drone") == ["0005", "0006"]
    assert names(out / "test" / "150" / "gallery_satellite") == [f"{i:04d}" for i in range(1, 7)]


def test_sues_default_altitudes_are_the_benchmark_ones(tmp_path):
    generate_sues(tmp_path, places=2, drones_per_place=1, image_size=32)
    altitudes = sorted(str(a) for a in SUES_ALTITUDES)
    assert names(tmp_path / "train") == names(tmp_path / "test") == altitudes
    assert json.loads((tmp_path / MANIFEST).read_text())["parameters"]["altitudes"] == list(SUES_ALTITUDES)


def test_cli_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    options = " ".join(capsys.readouterr().out.split("options:")[1].split())
    for flag, default in [("--test_places", "30"), ("--places", "50"), ("--size", "128"),
                          ("--altitudes", " ".join(map(str, SUES_ALTITUDES)))]:
        assert re.search(rf"{flag} [A-Z_]+ [^(]*\(default: {default}\)", options), flag
    assert "(default: 40 for university, 60% of --places for sues)" in options


@pytest.mark.parametrize("argv, message", [
    (["--layout", "sues", "--places", "3", "--train_places", "3"], "train_places=3: expected fewer than places=3"),
    (["--layout", "university", "--test_places", "0"], "test_places=0: expected an integer >= 1"),
    (["--layout", "sues", "--altitudes", "150", "150"], "altitudes=[150, 150]"),
])
def test_cli_rejects_bad_counts(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("generate, parameters, name", [
    (generate_university, dict(drones_per_place=0), "drones_per_place=0"),
    (generate_sues, dict(places=1), "places=1"),
    (generate_sues, dict(image_size=16), "image_size=16"),
])
def test_generators_name_the_bad_parameter(tmp_path, generate, parameters, name):
    with pytest.raises(ValueError, match=re.escape(name)):
        generate(tmp_path / "out", **parameters)
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_foreign_data(tmp_path, capsys):
    (tmp_path / "train" / "mine").mkdir(parents=True)
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path)])
    assert str(tmp_path) in capsys.readouterr().err
    assert (tmp_path / "train" / "mine").is_dir()
