"""Query and gallery sets of the retrieval protocol (docs/method.md §4)."""
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch
from torch.utils.data import Dataset

from utils.errors import UserError

from .folders import (check_bad_image_mode, dataset_split_dir, load_rgb, require_dir, scan_classes,
                      try_load_rgb)
from .transforms import build_test_transform

# mode -> (query folder, gallery folder)
MODES = {1: ("query_satellite", "gallery_drone"), 2: ("query_drone", "gallery_satellite")}
MODE_NAMES = {1: "Satellite->Drone", 2: "Drone->Satellite"}


def class_id(folder: Path) -> int:
    """The integer id of a test class folder, whose name must be digits only (``0001``, ``23``).

    ``int()`` alone would accept ``-1`` (the protocol's junk label, silently dropped from every
    ranking), ``0_1`` or `` 1 ``, so the name is checked first.
    """
    if not (folder.name.isascii() and folder.name.isdigit()):
        raise UserError(f"class folder {folder} is not a non-negative integer id; expected digits only, "
                        f"such as 0001")
    return int(folder.name)


def _is_readable(path) -> bool:
    return try_load_rgb(path, "skip") is not None


class RetrievalFolder(Dataset):
    """Images of ``folder/<class id>/``; item ``i`` is ``(image, label)`` with label = int(class id).

    Attributes ``paths`` (str, sorted by class then file name) and ``labels`` (LongTensor) give the
    evaluation its ground truth without decoding images.

    ``on_bad_image='skip'`` decodes every file once up front and *drops* unreadable ones (with a
    warning each): substituting another image would duplicate a gallery item and bias the
    metrics. ``'error'`` raises a UserError naming the file when it is loaded.
    """

    def __init__(self, folder, transform: Callable, on_bad_image: str = "error"):
        self.folder = Path(folder)
        self.transform = transform
        self.on_bad_image = check_bad_image_mode(on_bad_image)
        classes = scan_classes(folder, "a query or gallery folder of class folders named by integer id")
        samples, seen = [], {}
        for name, paths in classes.items():
            label = class_id(self.folder / name)
            if label in seen:
                raise UserError(f"class folders {self.folder / seen[label]} and {self.folder / name} name the same "
                                f"id {label}; expected one folder per id")
            seen[label] = name
            samples += [(path, label) for path in paths]
        if self.on_bad_image == "skip":
            # Decoding is mostly C code that releases the GIL, so threads check files in parallel.
            with ThreadPoolExecutor() as pool:
                readable = list(pool.map(_is_readable, [path for path, _ in samples]))
            samples = [sample for sample, ok in zip(samples, readable) if ok]
            if not samples:
                raise UserError(f"no readable image in {self.folder}; expected at least one valid image")
        self.paths = [str(path) for path, _ in samples]
        self.labels = torch.tensor([label for _, label in samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.transform(load_rgb(self.paths[index])), int(self.labels[index])


def resolve_test_folders(test_dir, dataset: str, altitude: Optional[int], mode: int) -> Tuple[Path, Path]:
    """``(query_dir, gallery_dir)`` of a retrieval direction.

    mode 1 = Satellite->Drone (query_satellite, gallery_drone); mode 2 = Drone->Satellite
    (query_drone, gallery_satellite). SUES-200 keeps them under ``test_dir/<altitude>/``.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected 1 ({MODE_NAMES[1]}) or 2 ({MODE_NAMES[2]})")
    base = dataset_split_dir(test_dir, dataset, altitude, "the test folder of the dataset")
    query, gallery = (require_dir(base / name, f"the {name} folder of {MODE_NAMES[mode]} retrieval")
                      for name in MODES[mode])
    scan_classes(query, f"the {MODES[mode][0]} folder with at least one query image")
    return query, gallery


def build_test_sets(test_dir, dataset: str = "university", altitude: Optional[int] = None, mode: int = 2,
                    h: int = 256, w: int = 256,
                    on_bad_image: str = "error") -> Tuple[RetrievalFolder, RetrievalFolder]:
    """Query and gallery sets of one retrieval direction with the test transform."""
    transform = build_test_transform(h, w)
    return tuple(RetrievalFolder(folder, transform, on_bad_image=on_bad_image)
                 for folder in resolve_test_folders(test_dir, dataset, altitude, mode))
