"""Three views in training (satellite, drone, street; MCCG's --views 3 and --extra_Google): the paired
items, the refusals, and a three-view run that resumes exactly."""
import pytest
import torch
import torchvision.transforms as T

import train
from datasets import CrossViewTrainSet, build_train_set
from datasets.pairs import VIEWS
from utils.errors import UserError

from helpers.files import names, raw
from helpers.tiny_runs import base_args, losses, state

RAW3 = {view: T.PILToTensor() for view in VIEWS[3]}


def test_three_view_items_hold_one_image_of_each_view_of_the_class(university_root):
    train_dir = university_root / "train"
    dataset = CrossViewTrainSet(train_dir, RAW3, views=VIEWS[3])
    torch.manual_seed(0)
    for index in range(len(dataset)):
        satellite, drone, street, label = dataset[index]
        cid = dataset.classes[label]
        assert torch.equal(satellite, raw(train_dir / "satellite" / cid / f"{cid}.jpg"))
        assert any(torch.equal(drone, raw(p)) for p in (train_dir / "drone" / cid).iterdir())
        assert any(torch.equal(street, raw(p)) for p in (train_dir / "street" / cid).iterdir())


def test_extra_google_adds_the_google_images_to_the_street_pool(university_root):
    train_dir = university_root / "train"
    plain = CrossViewTrainSet(train_dir, RAW3, views=VIEWS[3])
    extra = CrossViewTrainSet(train_dir, RAW3, views=VIEWS[3], extra_google=True)
    without_google = 0
    for label, cid in enumerate(extra.classes):
        folder = train_dir / "google" / cid
        google = sorted(folder.iterdir()) if folder.is_dir() else []
        without_google += not google
        assert extra.images["street"][label] == plain.images["street"][label] + google
    assert 0 < without_google < len(extra.classes)  # the generator leaves some places without google images


def test_a_street_class_missing_is_named(university_root, tmp_path):
    train_dir = tmp_path / "train"
    for view in ("satellite", "drone", "street"):
        classes = names(university_root / "train" / view)
        for cid in classes[:-1] if view == "street" else classes:
            (train_dir / view / cid).mkdir(parents=True)
            for image in (university_root / "train" / view / cid).iterdir():
                (train_dir / view / cid / image.name).write_bytes(image.read_bytes())
    CrossViewTrainSet(train_dir, RAW3)  # two views do not need street/
    with pytest.raises(UserError, match=f"classes {classes[-1]} are in .*satellite but not in .*street"):
        CrossViewTrainSet(train_dir, RAW3, views=VIEWS[3])


@pytest.mark.parametrize("kwargs, message", [
    ({"views": 4}, "views=4: expected 2 or 3"),
    ({"views": 3, "dataset": "sues", "altitude": 150}, "SUES-200 does not have"),
])
def test_build_train_set_refuses_views_it_cannot_build(university_root, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_train_set(university_root / "train", **kwargs)


def test_extra_google_needs_the_street_view(university_root):
    with pytest.raises(ValueError, match="extra_google"):
        CrossViewTrainSet(university_root / "train", RAW3, extra_google=True)


@pytest.mark.parametrize("extra, message", [
    (("--dataset", "sues", "--altitude", "150", "--views", "3"),
     "--views 3 trains on street images, which SUES-200 does not have; use --views 2"),
    (("--extra_Google",), "--extra_Google adds the google images to the street view: use it with --views 3"),
])
def test_train_refuses_view_settings_the_data_cannot_have(university_root, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        train.main(base_args(university_root, tmp_path, "refused", *extra))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "refused").exists()


@pytest.fixture(scope="module")
def two_view_teacher(university_root, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("two_view_teacher")
    assert train.main(base_args(university_root, ckpt, "teacher", "--model", "mccg_convnext_atto", "--optimizer",
                                "adam", "--lr", "0.001", "--epochs", "1")) == 0
    return ckpt / "teacher"


@pytest.mark.slow
def test_a_two_view_teacher_is_refused_for_a_three_view_student_unless_allowed(
        university_root, tmp_path, two_view_teacher, capsys):
    args = base_args(university_root, tmp_path, "student", "--views", "3", "--epochs", "1", "--bigradual_n1", "0",
                     "--bigradual_n2", "0", "--teacher_path", str(two_view_teacher))
    with pytest.raises(SystemExit) as exit_info:
        train.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on 2 views and this student on 3" in err[0]
    assert "--allow_fewer_teacher_views" in err[0]
    assert train.main(args + ["--allow_fewer_teacher_views"]) == 0
    assert all(kd > 0 for kd in losses(tmp_path / "student", "kd"))


@pytest.mark.slow
def test_three_view_training_distils_every_view_and_resumes_exactly(university_root, tmp_path):
    teacher = base_args(university_root, tmp_path, "teacher", "--model", "mccg_convnext_atto", "--optimizer", "adam",
                        "--lr", "0.001", "--epochs", "1", "--views", "3", "--extra_Google")
    assert train.main(teacher) == 0
    common = ("--views", "3", "--extra_Google", "--bigradual_n1", "1", "--bigradual_n2", "1", "--seed", "3",
              "--teacher_path", str(tmp_path / "teacher"))
    assert train.main(base_args(university_root, tmp_path, "full", "--epochs", "2", *common)) == 0
    assert train.main(base_args(university_root, tmp_path, "split", "--epochs", "1", *common)) == 0
    assert train.main(base_args(university_root, tmp_path, "split", "--epochs", "2", "--resume")) == 0
    assert all(kd > 0 for kd in losses(tmp_path / "full", "kd"))
    assert losses(tmp_path / "full") == losses(tmp_path / "split")
    full, split = state(tmp_path / "full"), state(tmp_path / "split")
    assert all(torch.equal(full[k], split[k]) for k in full)
