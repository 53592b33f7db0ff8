"""Descriptors of a folder of images (or of a ``.mat`` file test.py wrote) for a gallery index,
and the identity of the run that computes them."""
import hashlib
from pathlib import Path
from typing import List, Tuple

import numpy as np
import scipy.io
import torch
from torch.utils.data import DataLoader, Dataset

from datasets import build_test_transform
from datasets.folders import is_image_file, load_rgb
from evaluation.features import extract_features
from runs.checkpoints import load_trained_model, resolve_run
from utils.errors import UserError

MAT_FIELDS = {"gallery": ("gallery_f", "gallery_path"), "query": ("query_f", "query_path")}


def list_images(root) -> Tuple[List[Path], List[str]]:
    """Image files under ``root`` (a folder, searched recursively, or one image file), with their names:
    paths relative to the folder, sorted. Hidden files and folders are skipped."""
    root = Path(root)
    if root.is_file():
        if not is_image_file(root):
            raise UserError(f"{root} is not an image file (expected one of the usual image extensions)")
        return [root], [root.name]
    if not root.is_dir():
        raise UserError(f"{root} not found; expected a folder of images or an image file")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p)
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not paths:
        raise UserError(f"{root} holds no image file; expected a folder of gallery or query images")
    return paths, [str(p.relative_to(root)) for p in paths]


class ImageFiles(Dataset):
    """Item ``i`` is ``(transformed image i, i)``: the shape ``extract_features`` reads."""

    def __init__(self, paths: List[Path], transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.transform(load_rgb(self.paths[index])), index


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RunDescriber:
    """A trained run's network and what identifies it in an index: run name and folder, checkpoint
    and its SHA-256, model, input size, flip TTA."""

    def __init__(self, run, which_epoch="last", flip: bool = True, device="cpu"):
        run_dir, checkpoint = resolve_run(run, which_epoch)
        if not checkpoint.is_file():
            raise UserError(f"checkpoint {checkpoint} does not exist; expected a run folder written by train.py")
        self.model, self.opts, _ = load_trained_model(run_dir, which_epoch)
        self.device, self.flip = torch.device(device), flip
        self.model.to(self.device)
        self.identity = {"run": run_dir.resolve().name, "run_dir": str(run_dir.resolve()), "checkpoint": checkpoint.name,
                         "checkpoint_sha256": file_sha256(checkpoint), "model": self.opts["model"],
                         "h": int(self.opts["h"]), "w": int(self.opts["w"]), "flip": flip}

    def describe(self, paths: List[Path], batch_size: int = 32, num_workers: int = 0) -> torch.Tensor:
        """(N, D) unit-norm descriptors of the images at ``paths``, as test.py computes them."""
        images = ImageFiles(paths, build_test_transform(self.identity["h"], self.identity["w"]))
        loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        return extract_features(self.model, loader, self.device, flip=self.flip, desc="images")[0]


def read_mat_features(path, role: str) -> Tuple[torch.Tensor, List[str]]:
    """The ``role`` ('gallery' or 'query') descriptors and image paths of a test.py ``.mat`` file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"features file {path} does not exist; expected a .mat file written by test.py --export_mat")
    try:
        content = scipy.io.loadmat(path)
    except Exception:  # scipy raises many types for foreign or damaged files
        raise UserError(f"{path} is not a MATLAB features file (expected test.py --export_mat output)") from None
    features_key, paths_key = MAT_FIELDS[role]
    if features_key not in content or paths_key not in content:
        raise UserError(f"{path} has no {features_key}/{paths_key}; expected test.py --export_mat output")
    features = np.asarray(content[features_key], dtype=np.float32)
    names = [str(name).rstrip() for name in content[paths_key]]
    if features.ndim != 2 or len(features) != len(names) or len(names) == 0:
        raise UserError(f"{path}: {features_key} of shape {features.shape} does not match {len(names)} paths")
    return torch.from_numpy(features), names
