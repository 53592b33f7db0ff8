"""Siamese wrapper: one network, applied to the satellite and the drone view."""
import torch.nn as nn


class TwoViewNet(nn.Module):
    """``forward(satellite, drone) -> (net(satellite), net(drone))`` with fully shared weights.

    Both views go through the same module in one ``forward`` call, so DistributedDataParallel
    sees every parameter used once per step and reduces the gradients summed over both views.
    The views are not concatenated into one batch: BatchNorm statistics stay per view, as in
    the MCCG and BiCrossNet training code.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, satellite, drone):
        return self.net(satellite), self.net(drone)
