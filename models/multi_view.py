"""Siamese wrapper: one network, applied to every view of a training step."""
import torch.nn as nn


class MultiViewNet(nn.Module):
    """``forward(*views) -> tuple(net(view) for view in views)`` with fully shared weights.

    Every view (satellite and drone; street too with three views) goes through the same module in
    one ``forward`` call, so DistributedDataParallel sees every parameter used once per step and
    reduces the gradients summed over the views. The views are not concatenated into one batch:
    BatchNorm statistics stay per view, as in the MCCG and BiCrossNet training code.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, *views):
        return tuple(self.net(view) for view in views)
