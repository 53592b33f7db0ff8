"""Data of BiCrossNet: synthetic benchmark look-alikes, paired training sets, retrieval sets."""
from .folders import (BAD_IMAGE_MODES, DATASETS, IMG_EXTENSIONS, BadImageError, load_rgb,
                      scan_classes, to_rgb)
from .test import MODES, RetrievalFolder, build_test_sets, resolve_test_folders
from .train import CrossViewTrainSet, build_train_set
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_test_transform, build_train_transforms

_SYNTHETIC = ("generate_sues", "generate_university")

__all__ = [
    "BAD_IMAGE_MODES", "DATASETS", "IMG_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD", "MODES",
    "BadImageError", "CrossViewTrainSet", "RetrievalFolder", "build_test_sets", "build_test_transform",
    "build_train_set", "build_train_transforms", "load_rgb", "resolve_test_folders", "scan_classes",
    "to_rgb", *_SYNTHETIC,
]


def __getattr__(name):
    # The generator is imported on first use so that ``python -m datasets.synthetic`` does not
    # find its own module already imported by the package.
    if name in _SYNTHETIC:
        from . import synthetic
        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
