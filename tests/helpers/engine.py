"""The bit-packed engine as the engine tests use it: its ops (None where the build failed), the
marker that skips without them, and a student with random weights in every term."""
import pytest
import torch

from models.bitpacked.build import load_ops

STUDENT = "bicrossnet_bnext_tiny"
ISAS = ("avx512", "avx2", "neon", "portable")

ops = load_ops()
needs_engine = pytest.mark.skipif(ops is None, reason="the bitpacked engine could not be built here")


def randomize(model, seed=0):
    """Random BN statistics, affine terms, PReLU slopes, biases and binary weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not name.endswith(("temperature", "tau")):
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5 if name.endswith("running_var")
                             else torch.randn(tensor.shape, generator=g) * 0.2)
    return model.eval()
