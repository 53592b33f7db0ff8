"""Loaders: transforms, paired training sets, retrieval folders, and every bad-input path."""
import io
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from datasets import (IMAGENET_MEAN, IMAGENET_STD, BadImageError, CrossViewTrainSet, RetrievalFolder,
                      build_test_sets, build_test_transform, build_train_set, build_train_transforms,
                      load_rgb, resolve_test_folders, scan_classes)
from utils.errors import UserError
from helpers.files import names, raw

RAW = {"satellite": T.PILToTensor(), "drone": T.PILToTensor()}


def save(path, image=None, colour=(10, 20, 30), fmt=None):
    """Write ``image`` (default: 8x8 of ``colour``) to ``path``, creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if image is not None else Image.new("RGB", (8, 8), colour)).save(path, format=fmt)
    return path


def make_pairs(root, classes=("0001", "0002", "0003"), drones=2):
    """Lossless two-view set; colours encode (class, view, image) so tensors reveal their source."""
    for c, cid in enumerate(classes):
        save(root / "satellite" / cid / f"{cid}.png", colour=(40 * c, 200, 0))
        for k in range(drones):
            save(root / "drone" / cid / f"image-{k + 1:02d}.png", colour=(40 * c, 100, 50 * k))
    return root


def noisy_jpeg(size=64) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


BAD_FILES = {
    "zero-byte": b"",
    "truncated": noisy_jpeg()[:3000],
    "not-an-image": b"this is a text file, not an image\n",
    "garbled": noisy_jpeg()[:200] + bytes(range(256)) * 20,
}


def raises_naming(path, error=UserError):
    return pytest.raises(error, match=re.escape(str(path)))


# ---------------------------------------------------------------------------------------------
# Transforms


def test_test_transform_is_bicubic_resize_then_imagenet_normalisation():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    expected = np.asarray(image.resize((24, 20), Image.BICUBIC), np.float32) / 255
    expected = (expected - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    out = build_test_transform(20, 24)(image)
    assert out.shape == (3, 20, 24)
    assert np.allclose(out.numpy(), expected.transpose(2, 0, 1), atol=1e-5)


def test_train_transforms_shapes_erasing_and_options():
    image = Image.new("RGB", (50, 40), (200, 180, 160))
    off = build_train_transforms(48, 32)
    on = build_train_transforms(48, 32, erasing_p=1.0, color_jitter=True, DA=True)
    for view in ("satellite", "drone"):
        assert off[view](image).shape == (3, 48, 32)
    # A uniform image normalizes to non-zero values everywhere; erasing fills zeros.
    assert (off["drone"](image) != 0).all()
    erased = (on["drone"](image) == 0).all(0).float().mean()
    assert 0.02 <= erased <= 0.4 + 1e-6
    kinds = {view: [type(t) for t in on[view].transforms] for view in on}
    assert kinds["drone"][0] is T.AutoAugment and T.AutoAugment not in kinds["satellite"]
    assert T.RandomAffine in kinds["satellite"] and T.RandomAffine not in kinds["drone"]
    assert all(T.ColorJitter in k for k in kinds.values())
    assert not any(T.ColorJitter in [type(t) for t in off[v].transforms] for v in off)


def test_satellite_augmentation_is_random_and_seeded():
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    satellite = build_train_transforms(32, 32)["satellite"]
    outputs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outputs.append(satellite(image))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


# ---------------------------------------------------------------------------------------------
# Training sets on generated data


def test_items_pair_both_views_of_one_class(university_root, university_spec):
    train = university_root / "train"
    dataset = CrossViewTrainSet(train, RAW)
    assert dataset.classes == names(train / "satellite")
    assert dataset.num_classes == len(dataset) == university_spec["train_places"]
    torch.manual_seed(0)
    for index in range(len(dataset)):
        satellite, drone, label = dataset[index]
        cid = dataset.classes[label]
        assert label == index
        assert torch.equal(satellite, raw(train / "satellite" / cid / f"{cid}.jpg"))
        assert any(torch.equal(drone, raw(p)) for p in (train / "drone" / cid).iterdir())


def test_sample_num_repeats_each_class(university_root, university_spec):
    dataset = CrossViewTrainSet(university_root / "train", RAW, sample_num=3)
    assert len(dataset) == 3 * university_spec["train_places"]
    assert [dataset[i][2] for i in range(7)] == [0, 0, 0, 1, 1, 1, 2]
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_random_picks_follow_torch_seed(university_root, university_spec):
    dataset = CrossViewTrainSet(university_root / "train", RAW)
    drones = [raw(p) for p in sorted((university_root / "train" / "drone" / dataset.classes[0]).iterdir())]

    def which(drone):
        return next(k for k, d in enumerate(drones) if torch.equal(drone, d))

    def picks(seed, n=30):
        torch.manual_seed(seed)
        return [which(dataset[0][1]) for _ in range(n)]

    assert picks(0) == picks(0)
    assert picks(0) != picks(1)
    assert set(picks(0)) == set(range(university_spec["drones_per_place"]))


def test_build_train_set_university(university_root):
    dataset = build_train_set(university_root / "train", "university", h=32, w=24)
    satellite, drone, label = dataset[1]
    assert satellite.shape == drone.shape == (3, 32, 24)
    assert label == 1


@pytest.mark.parametrize("altitude", [300, "300"])
def test_build_train_set_sues_uses_the_altitude_folder(sues_root, sues_spec, altitude):
    dataset = build_train_set(sues_root / "train", "sues", altitude, h=32, w=32)
    assert dataset.root == sues_root / "train" / "300"
    assert dataset.classes == [f"{i:04d}" for i in range(1, sues_spec["train_places"] + 1)]
    assert all(p.parts[-4] == "300" for view in dataset.images.values() for paths in view for p in paths)


@pytest.mark.parametrize("altitude, error, fragment", [
    (None, ValueError, "altitude=None"),  # a bad argument names the parameter
    ("abc", ValueError, "altitude='abc'"),
    (175, UserError, "no folder {train}/175 for altitude 175"),  # a missing folder names the path
])
def test_sues_altitude_errors_list_the_available_ones(sues_root, altitude, error, fragment):
    with pytest.raises(error) as info:
        build_train_set(sues_root / "train", "sues", altitude)
    assert fragment.format(train=sues_root / "train") in str(info.value)
    assert f"altitude folders in {sues_root / 'train'}: 150, 300" in str(info.value)


def test_a_sues_folder_that_already_names_the_altitude_gets_a_hint(sues_root):
    with pytest.raises(UserError) as info:  # the way SUES-200 stores it: train/150/{drone,satellite}
        build_train_set(sues_root / "train" / "150", "sues", 150)
    assert str(info.value) == (f"{sues_root / 'train' / '150'} is already the folder of altitude 150; pass its "
                               f"parent ({sues_root / 'train'}) with the altitude given separately (SUES-200 keeps "
                               f"one folder per altitude under train/ and test/)")


def test_bad_argument_values_are_value_errors_naming_the_parameter(university_root):
    with pytest.raises(ValueError, match="dataset='cvusa'.*university, sues"):
        build_train_set(university_root / "train", "cvusa")
    with pytest.raises(ValueError, match="on_bad_image='ignore'.*error, skip"):
        build_train_set(university_root / "train", on_bad_image="ignore")
    with pytest.raises(ValueError, match="sample_num=0"):
        CrossViewTrainSet(university_root / "train", RAW, sample_num=0)


# ---------------------------------------------------------------------------------------------
# Retrieval sets on generated data


def test_retrieval_folder_labels_are_folder_ids(university_root, university_spec):
    folder = university_root / "test" / "gallery_drone"
    dataset = RetrievalFolder(folder, T.PILToTensor())
    files = sorted(p for c in folder.iterdir() for p in c.iterdir())
    assert dataset.paths == [str(p) for p in files]
    assert dataset.labels.dtype == torch.long
    assert dataset.labels.tolist() == [int(p.parent.name) for p in files]
    n_gallery = university_spec["test_places"] + university_spec["distractor_places"]
    assert len(dataset) == n_gallery * university_spec["drones_per_place"]
    image, label = dataset[4]
    assert torch.equal(image, raw(files[4])) and label == int(files[4].parent.name)


def test_resolve_test_folders(university_root, sues_root):
    test = university_root / "test"
    assert resolve_test_folders(test, "university", None, 1) == (test / "query_satellite",
                                                                  test / "gallery_drone")
    assert resolve_test_folders(test, "university", None, 2) == (test / "query_drone",
                                                                  test / "gallery_satellite")
    sues = sues_root / "test" / "150"
    assert resolve_test_folders(sues_root / "test", "sues", 150, 2) == (sues / "query_drone",
                                                                         sues / "gallery_satellite")
    assert resolve_test_folders(test, "university", None, 3) == (test / "query_street", test / "gallery_satellite")
    with pytest.raises(ValueError, match="mode=7"):
        resolve_test_folders(test, "university", None, 7)


def test_build_test_sets_sizes(sues_root, sues_spec):
    queries, gallery = build_test_sets(sues_root / "test", "sues", 300, mode=1, h=32, w=32)
    n_test = sues_spec["places"] - sues_spec["train_places"]
    assert len(queries) == n_test and len(gallery) == sues_spec["places"] * sues_spec["drones_per_place"]
    assert set(queries.labels.tolist()) < set(gallery.labels.tolist())
    assert queries[0][0].shape == (3, 32, 32)


# ---------------------------------------------------------------------------------------------
# Bad folders


def test_misspelled_root_suggests_the_close_name(tmp_path):
    make_pairs(tmp_path / "University-1652" / "train")
    with raises_naming(tmp_path / "Univercity-1652" / "train") as info:
        build_train_set(tmp_path / "Univercity-1652" / "train")
    assert f"did you mean {tmp_path / 'University-1652'}?" in str(info.value)


def test_dataset_root_instead_of_split_points_at_the_split(tmp_path):
    make_pairs(tmp_path / "train")
    (tmp_path / "test" / "query_drone").mkdir(parents=True)
    with raises_naming(tmp_path / "satellite") as info:
        build_train_set(tmp_path)
    assert f"did you mean {tmp_path / 'train' / 'satellite'}?" in str(info.value)
    with raises_naming(tmp_path / "query_drone") as info:
        resolve_test_folders(tmp_path, "university", None, 2)
    assert f"did you mean {tmp_path / 'test' / 'query_drone'}?" in str(info.value)


def test_missing_view_folder(tmp_path):
    make_pairs(tmp_path)
    shutil.rmtree(tmp_path / "drone")
    with raises_naming(tmp_path / "drone"):
        CrossViewTrainSet(tmp_path, RAW)


def test_root_that_is_a_file(tmp_path):
    save(tmp_path / "train.png")
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'train.png'} is not a folder")):
        CrossViewTrainSet(tmp_path / "train.png", RAW)


def test_class_folder_without_images(tmp_path):
    make_pairs(tmp_path)
    empty = tmp_path / "drone" / "0004"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match=re.escape(f"class folder {empty} has no images")):
        CrossViewTrainSet(tmp_path, RAW)


def test_class_in_one_view_only(tmp_path):
    make_pairs(tmp_path)
    save(tmp_path / "satellite" / "0009" / "0009.png")
    with pytest.raises(UserError, match="0009") as info:
        CrossViewTrainSet(tmp_path, RAW)
    assert f"in {tmp_path / 'satellite'} but not in {tmp_path / 'drone'}" in str(info.value)


def test_empty_dataset(tmp_path):
    (tmp_path / "satellite").mkdir()
    (tmp_path / "drone").mkdir()
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'satellite'} has no class folders")):
        CrossViewTrainSet(tmp_path, RAW)


def test_no_queries(tmp_path):
    (tmp_path / "query_drone").mkdir()
    (tmp_path / "gallery_satellite" / "0001").mkdir(parents=True)
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'query_drone'} has no class folders")):
        resolve_test_folders(tmp_path, "university", None, 2)


def test_retrieval_class_folder_must_be_an_integer(tmp_path):
    save(tmp_path / "0001" / "a.jpg")
    save(tmp_path / "tower" / "a.jpg")
    with raises_naming(tmp_path / "tower"):
        RetrievalFolder(tmp_path, T.PILToTensor())


def test_extensions_are_case_insensitive_and_others_ignored(tmp_path):
    for name, fmt in (("a.JPG", "JPEG"), ("b.Png", "PNG"), ("c.webp", "WEBP"), ("d.bmp", "BMP"),
                      ("e.jpeg", "JPEG"), ("f.gif", "GIF"), ("g.TIF", "TIFF"), (".hidden.jpg", "JPEG")):
        save(tmp_path / "0001" / name, fmt=fmt)
    (tmp_path / "0001" / "labels.txt").write_text("x")
    (tmp_path / ".cache").mkdir()
    assert {c: [p.name for p in v] for c, v in scan_classes(tmp_path, "classes").items()} == {
        "0001": ["a.JPG", "b.Png", "c.webp", "d.bmp", "e.jpeg", "f.gif", "g.TIF"]}


@pytest.mark.parametrize("names, message", [
    (["-1"], "is not a non-negative integer id"),
    (["0_1"], "is not a non-negative integer id"),
    ([" 1 "], "is not a non-negative integer id"),
    (["3", "0003"], "name the same id 3"),
])
def test_test_class_folders_must_be_distinct_non_negative_ids(tmp_path, names, message):
    for name in names:
        save(tmp_path / name / "a.jpg")
    with pytest.raises(UserError, match=message):
        RetrievalFolder(tmp_path, T.PILToTensor())


def test_symlinked_folders_are_followed(tmp_path):
    elsewhere = make_pairs(tmp_path / "elsewhere", classes=("0001", "0002"))
    root = tmp_path / "train"
    (root / "drone").mkdir(parents=True)
    os.symlink(elsewhere / "satellite", root / "satellite")
    for cid in ("0001", "0002"):
        os.symlink(elsewhere / "drone" / cid, root / "drone" / cid)
    dataset = CrossViewTrainSet(root, RAW)
    assert dataset.classes == ["0001", "0002"]
    assert dataset[1][0][:, 0, 0].tolist() == [40, 200, 0]


# ---------------------------------------------------------------------------------------------
# Bad images


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file_raises_naming_it(tmp_path, kind):
    path = tmp_path / "bad.jpg"
    path.write_bytes(BAD_FILES[kind])
    with raises_naming(path, BadImageError):
        load_rgb(path)


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_train_set_error_and_skip_modes(tmp_path, kind):
    make_pairs(tmp_path, drones=2)
    bad = tmp_path / "drone" / "0002" / "image-01.png"
    bad.write_bytes(BAD_FILES[kind])
    good = raw(tmp_path / "drone" / "0002" / "image-02.png")

    strict = CrossViewTrainSet(tmp_path, RAW)
    with raises_naming(bad, BadImageError):
        for seed in range(20):  # some seed picks the bad file
            torch.manual_seed(seed)
            strict[1]

    lenient = CrossViewTrainSet(tmp_path, RAW, on_bad_image="skip")
    with pytest.warns(UserWarning, match=re.escape(str(bad))):
        for seed in range(20):
            torch.manual_seed(seed)
            assert torch.equal(lenient[1][1], good)


def test_skip_mode_with_no_readable_image_in_a_class(tmp_path):
    make_pairs(tmp_path, drones=1)
    (tmp_path / "drone" / "0003" / "image-01.png").write_bytes(b"")
    dataset = CrossViewTrainSet(tmp_path, RAW, on_bad_image="skip")
    with pytest.warns(UserWarning), raises_naming(tmp_path / "drone" / "0003"):
        dataset[2]


def test_retrieval_folder_skip_drops_and_error_raises(tmp_path):
    save(tmp_path / "0001" / "a.jpg")
    save(tmp_path / "0001" / "b.jpg").write_bytes(BAD_FILES["truncated"])
    save(tmp_path / "0002" / "a.jpg")
    with pytest.warns(UserWarning, match=re.escape(str(tmp_path / "0001" / "b.jpg"))):
        lenient = RetrievalFolder(tmp_path, T.PILToTensor(), on_bad_image="skip")
    assert lenient.paths == [str(tmp_path / "0001" / "a.jpg"), str(tmp_path / "0002" / "a.jpg")]
    assert lenient.labels.tolist() == [1, 2]
    strict = RetrievalFolder(tmp_path, T.PILToTensor())
    assert len(strict) == 3
    with raises_naming(tmp_path / "0001" / "b.jpg", BadImageError):
        strict[1]


def _grey16():
    return Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))


def _palette_with_transparency():
    image = Image.new("P", (3, 1))
    image.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    image.putdata([0, 1, 1])
    image.info["transparency"] = 0
    return image


@pytest.mark.parametrize("make, fmt, expected", [
    (lambda: Image.new("L", (3, 1), 77), "PNG", [[77, 77, 77]] * 3),
    (lambda: Image.new("RGBA", (3, 1), (10, 20, 30, 0)), "PNG", [[10, 20, 30]] * 3),
    (lambda: Image.new("LA", (3, 1), (90, 128)), "PNG", [[90, 90, 90]] * 3),
    (_palette_with_transparency, "PNG", [[10, 20, 30], [200, 100, 0], [200, 100, 0]]),
    (_grey16, "PNG", [[0, 0, 0], [100, 100, 100], [255, 255, 255]]),
    (lambda: Image.new("1", (3, 1), 1), "BMP", [[255, 255, 255]] * 3),
], ids=["L", "RGBA", "LA", "P-transparent", "I;16", "1-bit"])
def test_modes_convert_to_8bit_rgb(tmp_path, make, fmt, expected):
    path = save(tmp_path / f"image.{fmt.lower()}", make(), fmt=fmt)
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert np.asarray(image)[0].tolist() == expected


def test_train_items_are_three_channel_for_any_mode(tmp_path):
    save(tmp_path / "satellite" / "0001" / "s.png", _grey16())
    save(tmp_path / "drone" / "0001" / "d.png", Image.new("LA", (4, 4), (50, 10)))
    satellite, drone, _ = CrossViewTrainSet(tmp_path, RAW)[0]
    assert satellite.shape == (3, 1, 3) and drone.shape == (3, 4, 4)


# ---------------------------------------------------------------------------------------------
# DataLoader workers


def _corrupt_pairs(root):
    make_pairs(root, classes=("0001", "0002", "0003", "0004"), drones=2)
    bad = root / "drone" / "0003" / "image-01.png"
    bad.write_bytes(BAD_FILES["truncated"])
    return bad


def test_workers_finish_in_skip_mode(tmp_path):
    _corrupt_pairs(tmp_path)
    dataset = CrossViewTrainSet(tmp_path, RAW, sample_num=5, on_bad_image="skip")
    loader = DataLoader(dataset, batch_size=4, shuffle=True, num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warnings raised inside workers are printed there
        labels = torch.cat([batch[2] for batch in loader])
    assert sorted(labels.tolist()) == sorted([c for c in range(4) for _ in range(5)])


def test_workers_report_bad_files_as_user_errors(tmp_path):
    bad = _corrupt_pairs(tmp_path)
    dataset = CrossViewTrainSet(tmp_path, RAW, sample_num=20)
    torch.manual_seed(0)
    with raises_naming(bad, BadImageError) as info:
        for _ in DataLoader(dataset, batch_size=4, num_workers=2):
            pass
    assert str(info.value).startswith(f"cannot read image {bad} ")
    assert "\n" not in str(info.value)


def test_workers_report_a_class_without_readable_images_in_one_line(tmp_path):
    make_pairs(tmp_path, drones=1)
    (tmp_path / "drone" / "0002" / "image-01.png").write_bytes(b"")
    dataset = CrossViewTrainSet(tmp_path, RAW, on_bad_image="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(BadImageError) as info:
            list(DataLoader(dataset, batch_size=3, num_workers=2))
    assert str(info.value) == (f"no readable image in {tmp_path / 'drone' / '0002'}; "
                               "expected at least one valid image per class")
