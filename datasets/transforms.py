"""Training and test image transforms of the BiCrossNet recipe (docs/method.md §3).

Drone and satellite images get different augmentations because their nuisances differ: drone
views vary in photometry and suffer occlusion (AutoAugment, random erasing), while a satellite
image is north-up, so a random rotation teaches the heading invariance drone views need.
"""
from typing import Dict

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD = 10


def _resize(h: int, w: int) -> T.Resize:
    return T.Resize((h, w), interpolation=T.InterpolationMode.BICUBIC)


def _to_normalized_tensor(color_jitter: bool) -> list:
    jitter = [T.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1)] if color_jitter else []
    return jitter + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def build_train_transforms(h: int, w: int, erasing_p: float = 0.0, color_jitter: bool = False,
                           DA: bool = False) -> Dict[str, T.Compose]:
    """``{'satellite': ..., 'drone': ..., 'street': ...}`` PIL -> normalized tensor (3, h, w) pipelines.

    Street (and google) images take the drone pipeline, as in MCCG: they are ground or oblique
    photos with the same nuisances. ``DA`` adds AutoAugment (ImageNet policy) to them;
    ``erasing_p`` is their RandomErasing probability; ``color_jitter`` adds ColorJitter(0.1, 0.1,
    0.1) to every view.
    """
    drone = [T.AutoAugment(T.AutoAugmentPolicy.IMAGENET)] if DA else []
    drone += [_resize(h, w), T.Pad(PAD, padding_mode="edge"), T.RandomCrop((h, w)),
              T.RandomHorizontalFlip()]
    drone += _to_normalized_tensor(color_jitter)
    drone.append(T.RandomErasing(p=erasing_p, scale=(0.02, 0.4), ratio=(0.3, 3.3), value=0))
    satellite = [_resize(h, w), T.Pad(PAD, padding_mode="edge"), T.RandomAffine(90), T.RandomCrop((h, w)),
                 T.RandomHorizontalFlip()]
    satellite += _to_normalized_tensor(color_jitter)
    drone = T.Compose(drone)
    return {"satellite": T.Compose(satellite), "drone": drone, "street": drone}


def build_test_transform(h: int, w: int) -> T.Compose:
    """Deterministic PIL -> normalized tensor (3, h, w) for queries and galleries."""
    return T.Compose([_resize(h, w)] + _to_normalized_tensor(False))
