"""Data of BiCrossNet: synthetic benchmark look-alikes, paired training sets, retrieval sets."""
from .folders import (BAD_IMAGE_MODES, DATASETS, IMG_EXTENSIONS, SUES_ALTITUDES, BadImageError, load_rgb,
                      scan_classes, to_rgb)
from .pairs import CrossViewTrainSet, build_train_set
from .retrieval import (AERIAL_MODES, DATASET_MODES, DRONE_QUERY_MODES, MODE_NAMES, MODES, RetrievalFolder,
                        build_test_sets, check_mode, modes_in_split, resolve_test_folders)
from .synthetic import generate_sues, generate_university
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_test_transform, build_train_transforms

__all__ = [
    "AERIAL_MODES", "BAD_IMAGE_MODES", "DATASETS", "DATASET_MODES", "DRONE_QUERY_MODES", "IMG_EXTENSIONS",
    "IMAGENET_MEAN", "IMAGENET_STD", "MODE_NAMES", "MODES", "SUES_ALTITUDES", "BadImageError", "CrossViewTrainSet",
    "RetrievalFolder", "build_test_sets", "build_test_transform", "build_train_set", "build_train_transforms",
    "check_mode", "generate_sues", "generate_university", "load_rgb", "modes_in_split", "resolve_test_folders",
    "scan_classes", "to_rgb",
]
