"""Paired training set: one image of every view of the same class per item.

Two views (the BiCrossNet recipe) pair a satellite and a drone image; three views (MCCG's
``--views 3``, University-1652 only) add a ground-level street image, optionally drawn from the
street and the noisier Google images together (``extra_google``).
"""
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch.utils.data import Dataset

from utils.errors import UserError

from .folders import (BadImageError, check_bad_image_mode, dataset_split_dir, list_images, require_dir,
                      scan_classes, try_load_rgb)
from .transforms import build_train_transforms

# The views of a training item, in order, by --views. The first two are the same with either count,
# so code that reads the satellite and drone outputs needs no special case.
VIEWS: Dict[int, Tuple[str, ...]] = {2: ("satellite", "drone"), 3: ("satellite", "drone", "street")}


def _describe(names) -> str:
    names = sorted(names)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


class CrossViewTrainSet(Dataset):
    """Classes of a folder holding one ``<view>/<class>/`` folder per view of ``views``.

    Item ``i`` belongs to class ``i // sample_num`` (labels follow the sorted folder names) and
    returns one random image of each view of that class, in the order of ``views``, then the
    label: ``(satellite, drone, label)`` or ``(satellite, drone, street, label)``. An epoch visits
    every class ``sample_num`` times. Picks use torch's RNG: ``torch.manual_seed`` and DataLoader
    worker seeding make them reproducible.

    ``extra_google`` adds the images of ``google/<class>/`` to the street pool of the class; a
    class may have no google folder or an empty one, as in University-1652.

    ``on_bad_image='skip'``: an unreadable file is reported once and the next image of the same
    class and view is used instead; a class with no readable image left raises BadImageError.
    """

    def __init__(self, root, transforms: Dict[str, Callable], sample_num: int = 1,
                 on_bad_image: str = "error", views: Tuple[str, ...] = VIEWS[2], extra_google: bool = False):
        if tuple(views) not in VIEWS.values():
            raise ValueError(f"views={views!r}: expected one of {', '.join(map(str, VIEWS.values()))}")
        if extra_google and "street" not in views:
            raise ValueError("extra_google adds google images to the street view: it needs views with 'street'")
        self.views = tuple(views)
        self.root = require_dir(root, f"a training folder holding {'/, '.join(self.views)}/ class folders")
        self.transforms = transforms
        self.on_bad_image = check_bad_image_mode(on_bad_image)
        if int(sample_num) != sample_num or sample_num < 1:
            raise ValueError(f"sample_num={sample_num!r}: expected an integer >= 1")
        self.sample_num = int(sample_num)
        found = {view: scan_classes(self.root / view, f"{view} class folders of the training set")
                 for view in self.views}
        for view in self.views[1:]:
            for one, other in ((view, "satellite"), ("satellite", view)):
                missing = set(found[one]) - set(found[other])
                if missing:
                    raise UserError(f"classes {_describe(missing)} are in {self.root / one} but not in "
                                    f"{self.root / other}; expected the same class folders in every view")
        self.classes: List[str] = sorted(found["satellite"])
        self.num_classes = len(self.classes)
        self.images: Dict[str, List[List[Path]]] = {
            view: [found[view][name] for name in self.classes] for view in self.views}
        if extra_google:
            google = require_dir(self.root / "google", "the google class folders that --extra_Google adds")
            for paths, name in zip(self.images["street"], self.classes):
                paths += list_images(google / name) if (google / name).is_dir() else []
        self._bad = set()

    def __len__(self) -> int:
        return self.num_classes * self.sample_num

    def _load(self, view: str, label: int):
        paths = self.images[view][label]
        first = int(torch.randint(len(paths), ()))
        for k in range(len(paths)):  # in 'skip' mode fall through to the next images of the class
            path = paths[(first + k) % len(paths)]
            if path in self._bad:
                continue
            image = try_load_rgb(path, self.on_bad_image)
            if image is not None:
                return image
            self._bad.add(path)
        raise BadImageError(f"no readable image in {paths[0].parent}; "
                            "expected at least one valid image per class")

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        label = index // self.sample_num
        return (*(self.transforms[view](self._load(view, label)) for view in self.views), label)


def build_train_set(data_dir, dataset: str = "university", altitude: Optional[int] = None,
                    h: int = 256, w: int = 256, sample_num: int = 1, erasing_p: float = 0.0,
                    color_jitter: bool = False, DA: bool = False, on_bad_image: str = "error",
                    views: int = 2, extra_google: bool = False) -> CrossViewTrainSet:
    """Training set of ``data_dir`` (University-1652 ``train/``, or SUES-200 ``train/`` whose
    ``<altitude>/`` sub-folder is used) with the recipe's augmentations.

    ``altitude`` is required for 'sues' and ignored for 'university' (which has none). ``views``
    is 2 or 3 (3 adds street images; SUES-200 has none).
    """
    if views not in VIEWS:
        raise ValueError(f"views={views!r}: expected {' or '.join(map(str, VIEWS))}")
    if views == 3 and dataset == "sues":
        raise ValueError("views=3 needs street images, which SUES-200 does not have")
    root = dataset_split_dir(data_dir, dataset, altitude, "the training folder of the dataset")
    transforms = build_train_transforms(h, w, erasing_p=erasing_p, color_jitter=color_jitter, DA=DA)
    return CrossViewTrainSet(root, transforms, sample_num=sample_num, on_bad_image=on_bad_image,
                             views=VIEWS[views], extra_google=extra_google)
