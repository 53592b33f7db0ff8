"""Query and gallery sets of the retrieval protocol (docs/method.md §4)."""
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch.utils.data import Dataset

from utils.errors import UserError

from .folders import (check_bad_image_mode, dataset_split_dir, load_rgb, require_dir, scan_classes,
                      try_load_rgb)
from .transforms import build_test_transform

# mode -> (query folder, gallery folder); the numbers are those of test.py's --mode.
MODES = {1: ("query_satellite", "gallery_drone"), 2: ("query_drone", "gallery_satellite"),
         3: ("query_street", "gallery_satellite"), 4: ("query_satellite", "gallery_street"),
         5: ("query_drone", "gallery_street"), 6: ("query_street", "gallery_drone")}


def _view(folder: str) -> str:
    """``query_drone`` -> ``drone``."""
    return folder.split("_", 1)[1]


# 1 -> "Satellite->Drone", 3 -> "Street->Satellite", ...
MODE_NAMES = {mode: "->".join(_view(folder).capitalize() for folder in folders) for mode, folders in MODES.items()}
# The directions between satellite and drone, which every dataset has; SUES-200 has no street view.
AERIAL_MODES = tuple(mode for mode, folders in MODES.items() if "street" not in map(_view, folders))
DATASET_MODES = {"university": tuple(MODES), "sues": AERIAL_MODES}
# The directions whose queries are drone images, several per place (multi-query pools them).
DRONE_QUERY_MODES = tuple(mode for mode, (query, _) in MODES.items() if _view(query) == "drone")


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


def check_mode(dataset: str, mode: int) -> int:
    """``mode`` if it is a direction of ``dataset``, else a ValueError (SUES-200 has no street view)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of " + ", ".join(f"{m} ({n})" for m, n in MODE_NAMES.items()))
    if mode not in DATASET_MODES.get(dataset, tuple(MODES)):
        raise ValueError(f"mode={mode} ({MODE_NAMES[mode]}): SUES-200 has no street view; its directions are "
                         + " and ".join(f"{m} ({MODE_NAMES[m]})" for m in DATASET_MODES[dataset]))
    return mode


def _altitude_folders(base: Path) -> list:
    """The SUES-200 altitude folders (digits, holding query/gallery folders) directly under ``base``."""
    return sorted(p.name for p in base.iterdir() if p.is_dir() and p.name.isdigit()
                  and any((p / name).is_dir() for name in MODES[1] + MODES[2]))


def _require_view_folder(base: Path, name: str, mode: int) -> Path:
    """``base/name``, else one line naming it; a missing street folder is named without the spelling
    hint (``query_street`` is no typo of ``query_satellite``), or said to be absent from SUES-200."""
    expected = f"the {name} folder of {MODE_NAMES[mode]} retrieval"
    if "street" not in name or (base / name).exists():
        return require_dir(base / name, expected)
    altitudes = _altitude_folders(base)
    if altitudes:
        raise UserError(f"{base / name} not found: {base} is a SUES-200 test split (altitude folders "
                        f"{', '.join(altitudes)}), and SUES-200 has no street view for {MODE_NAMES[mode]} retrieval")
    raise UserError(f"{base / name} not found; expected {expected} (University-1652's street view)")


def resolve_test_folders(test_dir, dataset: str, altitude: Optional[int], mode: int) -> Tuple[Path, Path]:
    """``(query_dir, gallery_dir)`` of a retrieval direction: ``MODES[mode]`` under the test split.

    Modes 1 and 2 are Satellite->Drone and Drone->Satellite; 3-6 involve University-1652's street
    view (a ValueError for SUES-200, which keeps its folders under ``test_dir/<altitude>/``).
    """
    check_mode(dataset, mode)
    base = dataset_split_dir(test_dir, dataset, altitude, "the test folder of the dataset")
    # Street folders first: on a SUES-200 split, their absence is the problem to report.
    folders = {name: _require_view_folder(base, name, mode)
               for name in sorted(MODES[mode], key=lambda n: "street" not in n)}
    query, gallery = (folders[name] for name in MODES[mode])
    scan_classes(query, f"the {MODES[mode][0]} folder with at least one query image")
    return query, gallery


def modes_in_split(test_dir, dataset: str, altitude: Optional[int] = None) -> Tuple[List[int], Dict[int, List[str]]]:
    """The directions of ``dataset`` the test split holds, and the skipped ones with their missing folders.

    The Satellite/Drone directions are always listed (:func:`resolve_test_folders` reports their
    missing folders); a street direction is listed only when both of its folders exist.
    """
    base = dataset_split_dir(test_dir, dataset, altitude, "the test folder of the dataset")
    present, skipped = [], {}
    for mode in DATASET_MODES[dataset]:
        missing = [name for name in MODES[mode] if not (base / name).is_dir()]
        if missing and mode not in AERIAL_MODES:
            skipped[mode] = missing
        else:
            present.append(mode)
    return present, skipped


def build_test_sets(test_dir, dataset: str = "university", altitude: Optional[int] = None, mode: int = 2,
                    h: int = 256, w: int = 256,
                    on_bad_image: str = "error") -> Tuple[RetrievalFolder, RetrievalFolder]:
    """Query and gallery sets of one retrieval direction with the test transform."""
    transform = build_test_transform(h, w)
    return tuple(RetrievalFolder(folder, transform, on_bad_image=on_bad_image)
                 for folder in resolve_test_folders(test_dir, dataset, altitude, mode))
