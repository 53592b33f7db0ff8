"""Paired two-view training set: one satellite and one drone image of the same class per item."""
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch.utils.data import Dataset

from utils.errors import UserError

from .folders import (BadImageError, check_bad_image_mode, dataset_split_dir, require_dir, scan_classes,
                      try_load_rgb)
from .transforms import build_train_transforms

VIEWS = ("satellite", "drone")


def _describe(names) -> str:
    names = sorted(names)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


class CrossViewTrainSet(Dataset):
    """Classes of a folder holding ``satellite/<class>/`` and ``drone/<class>/`` images.

    Item ``i`` belongs to class ``i // sample_num`` (labels follow the sorted folder names) and
    returns ``(satellite, drone, label)`` with one random image of each view of that class, so
    an epoch visits every class ``sample_num`` times. Picks use torch's RNG: ``torch.manual_seed``
    and DataLoader worker seeding make them reproducible.

    ``on_bad_image='skip'``: an unreadable file is reported once and the next image of the same
    class and view is used instead; a class with no readable image left raises BadImageError.
    """

    def __init__(self, root, transforms: Dict[str, Callable], sample_num: int = 1,
                 on_bad_image: str = "error"):
        self.root = require_dir(root, "a training folder holding satellite/ and drone/ class folders")
        self.transforms = transforms
        self.on_bad_image = check_bad_image_mode(on_bad_image)
        if int(sample_num) != sample_num or sample_num < 1:
            raise ValueError(f"sample_num={sample_num!r}: expected an integer >= 1")
        self.sample_num = int(sample_num)
        views = {view: scan_classes(self.root / view, f"{view} class folders of the training set")
                 for view in VIEWS}
        for view, other in (("satellite", "drone"), ("drone", "satellite")):
            missing = set(views[view]) - set(views[other])
            if missing:
                raise UserError(f"classes {_describe(missing)} are in {self.root / view} but not in "
                                f"{self.root / other}; expected the same class folders in both views")
        self.classes: List[str] = sorted(views["satellite"])
        self.num_classes = len(self.classes)
        self.images: Dict[str, List[List[Path]]] = {
            view: [views[view][name] for name in self.classes] for view in VIEWS}
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
        satellite, drone = (self.transforms[view](self._load(view, label)) for view in VIEWS)
        return satellite, drone, label


def build_train_set(data_dir, dataset: str = "university", altitude: Optional[int] = None,
                    h: int = 256, w: int = 256, sample_num: int = 1, erasing_p: float = 0.0,
                    color_jitter: bool = False, DA: bool = False,
                    on_bad_image: str = "error") -> CrossViewTrainSet:
    """Training set of ``data_dir`` (University-1652 ``train/``, or SUES-200 ``train/`` whose
    ``<altitude>/`` sub-folder is used) with the recipe's augmentations.

    ``altitude`` is required for 'sues' and ignored for 'university' (which has none).
    """
    root = dataset_split_dir(data_dir, dataset, altitude, "the training folder of the dataset")
    transforms = build_train_transforms(h, w, erasing_p=erasing_p, color_jitter=color_jitter, DA=DA)
    return CrossViewTrainSet(root, transforms, sample_num=sample_num, on_bad_image=on_bad_image)
