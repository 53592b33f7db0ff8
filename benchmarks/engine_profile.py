"""Where a bit-packed student's wall time goes, and its binary convs' MAC rates layer by layer.

Used by :mod:`benchmarks.feature_throughput` for both engines: the engine's C++ ops are timed
call by call (a stand-in for their namespace adds up each op's wall time), each binary conv by a
pair of hooks, and the rest of the backbone is the full-precision work left in PyTorch.
"""
import time
from collections import defaultdict
from typing import Dict

import torch
import torch.nn as nn

from models import bitpacked
from models.bitpacked.network import PackedBinaryConv

# The engine's ops whose wall time is added up, and the part of the network each one is.
OP_PARTS = {"conv": "binary convs (XNOR/popcount, BN1+PReLU output transform)",
            "pack": "packing (LearnableBias + sign + bits)",
            "tail": "fused tail (mixing, SE scaling, BN2, residual, pooling, next packing)",
            "tail_means": "fused tail's SE means"}
REST = "stem, SE gates and the other full-precision ops in PyTorch"
HEAD = "MCCG head"
# Parts that are full-precision work (the share target counts these).
FULL_PRECISION = (OP_PARTS["tail"], OP_PARTS["tail_means"], REST)


class TimedOps:
    """Stands in for the engine's ops namespace and adds up the wall time of the ops in OP_PARTS."""

    def __init__(self, ops):
        self.ops = ops
        self.seconds = dict.fromkeys(OP_PARTS, 0.0)

    def __getattr__(self, name):
        op = getattr(self.ops, name)
        if name not in self.seconds:
            return op

        def timed(*args):
            start = time.perf_counter()
            out = op(*args)
            self.seconds[name] += time.perf_counter() - start
            return out

        return timed


def conv_layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, PackedBinaryConv)]


def layer_hooks(model: nn.Module, layers: Dict[tuple, dict]):
    """Hooks adding each binary conv call's wall time and binary MACs to ``layers``, keyed by
    (in channels, kernel, stride, output height, output width)."""
    started = {}

    def before(module, args):
        started[module] = time.perf_counter()

    def after(module, args, out):
        key = (module.channels, module.kernel, module.stride, out.shape[2], out.shape[3])
        layers[key]["seconds"] += time.perf_counter() - started[module]
        layers[key]["macs"] += out.numel() * module.channels * module.kernel ** 2
        layers[key]["calls"] += 1

    return [hook for m in conv_layers(model)
            for hook in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]


def timed_passes(model: nn.Module, x: torch.Tensor, repeats: int):
    """(wall seconds per pass of the backbone, the head and each op in OP_PARTS; per-layer conv records)."""
    holders = [m for m in model.modules() if hasattr(m, "ops")]
    timer = TimedOps(holders[0].ops)
    layers = defaultdict(lambda: {"seconds": 0.0, "macs": 0, "calls": 0})
    hooks = layer_hooks(model, layers)
    backbone = head = 0.0
    try:
        for holder in holders:
            holder.ops = timer
        for _ in range(repeats):
            start = time.perf_counter()
            feature_map = model.backbone.forward_features(x)
            middle = time.perf_counter()
            model.head(feature_map)
            backbone, head = backbone + middle - start, head + time.perf_counter() - middle
    finally:
        for holder in holders:
            holder.ops = timer.ops
        for hook in hooks:
            hook.remove()
    per_pass = {"backbone": backbone / repeats, "head": head / repeats,
                **{k: v / repeats for k, v in timer.seconds.items()}}
    return per_pass, dict(layers)


@torch.inference_mode()
def profile_engine(model: nn.Module, batch: int, size: int, repeats: int, peak: float) -> dict:
    """Where a bit-packed student's wall time goes at ``batch``, and its binary convs' MAC rates."""
    x = torch.randn(batch, 3, size, size)
    model(x)
    t, layers = timed_passes(model, x, repeats)
    parts = {OP_PARTS[op]: t[op] for op in OP_PARTS if t[op] > 0}
    parts[REST] = t["backbone"] - sum(t[op] for op in OP_PARTS)
    parts[HEAD] = t["head"]
    conv_seconds = sum(layer["seconds"] for layer in layers.values())
    macs = sum(layer["macs"] for layer in layers.values())
    per_layer = [{"channels": k[0], "kernel": k[1], "stride": k[2], "out_size": f"{k[3]}x{k[4]}",
                  "ms": 1000 * v["seconds"] / repeats, "binary_mac_per_s": v["macs"] / v["seconds"],
                  "fraction_of_peak": v["macs"] / v["seconds"] / peak} for k, v in sorted(layers.items())]
    total = sum(parts.values())
    return {"batch": batch, "ms_per_batch": {k: 1000 * v for k, v in parts.items()},
            "full_precision_share": sum(parts.get(p, 0.0) for p in FULL_PRECISION) / total,
            "binary_mac_per_s": macs / conv_seconds, "peak_binary_mac_per_s": peak,
            "fraction_of_peak": macs / conv_seconds / peak, "layers": per_layer}


def print_profile(name: str, profile: dict, threads: int) -> None:
    total = sum(profile["ms_per_batch"].values())
    print(f"\n{name}, batch {profile['batch']}, {threads} threads (wall time per part):\n")
    print("| part | ms / batch | share |")
    print("|---|---:|---:|")
    for part, ms in profile["ms_per_batch"].items():
        print(f"| {part} | {ms:.2f} | {100 * ms / total:.1f}% |")
    print(f"\nfull-precision work: {100 * profile['full_precision_share']:.1f}% of the student's time; "
          f"binary convs: {profile['binary_mac_per_s'] / 1e9:.0f} G binary MAC/s, "
          f"{100 * profile['fraction_of_peak']:.0f}% of the popcount kernel's peak "
          f"({profile['peak_binary_mac_per_s'] / 1e9:.0f} G/s, {bitpacked.active_isa()}, {threads} threads)\n")
    print("| binary conv (in channels, kernel, stride, output map) | ms / batch | G binary MAC/s | of peak |")
    print("|---|---:|---:|---:|")
    for layer in profile["layers"]:
        print(f"| {layer['channels']}, {layer['kernel']}x{layer['kernel']}, s{layer['stride']}, {layer['out_size']} | "
              f"{layer['ms']:.2f} | {layer['binary_mac_per_s'] / 1e9:.0f} | {100 * layer['fraction_of_peak']:.0f}% |")
