"""Retrieval descriptors of a trained single-view network (docs/method.md §4).

Each image is embedded together with its horizontal mirror (flip test-time augmentation); the
branch features of the MCCG head are L2-normalized one by one and scaled by 1/sqrt(branches),
so every branch weighs the same in the dot-product score and the concatenation is unit norm.

Multi-scale test (MCCG's ``--ms``): for every scale s != 1 the input batch (and its mirror) is
also resized by bilinear interpolation (``scale_factor=s``, ``align_corners=False``), and the
branch features at every scale are summed before the per-branch normalization. A scale here is
the factor on height and width (``test.py --ms`` takes MCCG's area ratios and passes their square
roots), applied each time to the original batch: MCCG's code resizes the already resized batch
again at a third scale, which only matters with more than two.

Multi-query (:func:`pool_queries`): the descriptors of one place's queries become one query.
"""
import math
from typing import Iterable, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm


def fuse_branches(branch_features: torch.Tensor) -> torch.Tensor:
    """(B, D, branches) un-normalized branch features -> (B, D * branches) unit-norm descriptors."""
    branches = branch_features.shape[-1]
    return (F.normalize(branch_features.float(), dim=1) / math.sqrt(branches)).flatten(1)


def check_scales(scales: Iterable[float]) -> Tuple[float, ...]:
    """``scales`` as a tuple of floats: at least one, each finite and positive, none twice."""
    scales = tuple(float(s) for s in scales)
    if not scales or not all(math.isfinite(s) and s > 0 for s in scales) or len(set(scales)) < len(scales):
        raise ValueError(f"scales={scales!r}: expected distinct finite positive factors such as (1, 1.1)")
    return scales


def scaled_size(h: int, w: int, scale: float) -> Tuple[int, int]:
    """The size ``F.interpolate(scale_factor=scale)`` gives an ``h`` x ``w`` input: each side times
    ``scale``, rounded down."""
    return math.floor(h * scale), math.floor(w * scale)


def _multi_scale(model: torch.nn.Module, images: torch.Tensor, scales: Tuple[float, ...]) -> torch.Tensor:
    """Sum over ``scales`` of the (float32) branch features of ``images`` resized by each scale."""
    total = None
    for scale in scales:
        resized = images if scale == 1 else F.interpolate(images, scale_factor=scale, mode="bilinear",
                                                          align_corners=False)
        features = model(resized).float()
        total = features if total is None else total + features
    return total


def extract_features(model: torch.nn.Module, loader, device, amp: bool = False, flip: bool = True,
                     desc: str = "features", scales: Sequence[float] = (1.0,)) -> Tuple[torch.Tensor, torch.Tensor]:
    """Descriptors of every ``(image, label)`` batch of ``loader``, in loader order.

    Returns ``(features (N, D * branches) float32 on CPU, labels (N,) int64)``. ``model`` is put in
    eval mode, where it returns (B, D, branches); ``amp`` runs it under float16 autocast on CUDA.
    ``scales`` are the multi-scale test's resize factors (the default: the input size only).
    """
    device = torch.device(device)
    scales = check_scales(scales)
    model.eval()
    features, labels = [], []
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=amp and device.type == "cuda"):
        for images, batch_labels in tqdm(loader, desc=desc, unit="batch", leave=False):
            images = images.to(device, non_blocking=True)
            branch_features = _multi_scale(model, images, scales)
            if flip:
                branch_features += _multi_scale(model, torch.flip(images, dims=[3]), scales)
            features.append(fuse_branches(branch_features).cpu())
            labels.append(torch.as_tensor(batch_labels, dtype=torch.long))
    return torch.cat(features), torch.cat(labels)


def pool_queries(features: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One query per place (University-1652's multiple-query setting): the mean of the place's unit-norm
    descriptors, renormalized to unit norm.

    Returns ``(pooled (P, D) float32, place labels (P,) int64)``, places in ascending label order.
    """
    features, labels = torch.as_tensor(features).float(), torch.as_tensor(labels).long()
    if len(features) != len(labels) or len(labels) == 0:
        raise ValueError("pooling needs at least one query and exactly one label per feature row")
    places, place_of = torch.unique(labels, sorted=True, return_inverse=True)
    sums = torch.zeros(len(places), features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, place_of, features)
    counts = torch.bincount(place_of, minlength=len(places)).to(features.dtype)
    return F.normalize(sums / counts[:, None], dim=1), places
