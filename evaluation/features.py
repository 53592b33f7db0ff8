"""Retrieval descriptors of a trained single-view network (docs/method.md §4).

Each image is embedded together with its horizontal mirror (flip test-time augmentation); the
branch features of the MCCG head are L2-normalized one by one and scaled by 1/sqrt(branches),
so every branch weighs the same in the dot-product score and the concatenation is unit norm.
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm


def fuse_branches(branch_features: torch.Tensor) -> torch.Tensor:
    """(B, D, branches) un-normalized branch features -> (B, D * branches) unit-norm descriptors."""
    branches = branch_features.shape[-1]
    return (F.normalize(branch_features.float(), dim=1) / math.sqrt(branches)).flatten(1)


def extract_features(model: torch.nn.Module, loader, device, amp: bool = False, flip: bool = True,
                     desc: str = "features") -> Tuple[torch.Tensor, torch.Tensor]:
    """Descriptors of every ``(image, label)`` batch of ``loader``, in loader order.

    Returns ``(features (N, D * branches) float32 on CPU, labels (N,) int64)``. ``model`` is put in
    eval mode, where it returns (B, D, branches); ``amp`` runs it under float16 autocast on CUDA.
    """
    device = torch.device(device)
    model.eval()
    features, labels = [], []
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=amp and device.type == "cuda"):
        for images, batch_labels in tqdm(loader, desc=desc, unit="batch", leave=False):
            images = images.to(device, non_blocking=True)
            branch_features = model(images).float()
            if flip:
                branch_features += model(torch.flip(images, dims=[3])).float()
            features.append(fuse_branches(branch_features).cpu())
            labels.append(torch.as_tensor(batch_labels, dtype=torch.long))
    return torch.cat(features), torch.cat(labels)
