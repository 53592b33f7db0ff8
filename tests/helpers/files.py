"""Reading folders and images back the way the tests compare them."""
from pathlib import Path

import torchvision.transforms as T

from datasets import load_rgb


def names(folder):
    """Sorted names of what ``folder`` holds."""
    return sorted(p.name for p in Path(folder).iterdir())


def raw(path):
    """The image at ``path`` as a uint8 tensor, exactly as the dataset loader decodes it."""
    return T.PILToTensor()(load_rgb(path))


def snapshot(folder):
    """``{relative path: bytes}`` of every file under ``folder``: compare two to prove nothing changed."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}
