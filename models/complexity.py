"""Parameter and operation counts of binary networks, measured with ``torch.utils.flop_counter``.

BNN papers count multiply-accumulates: ``bops`` = MACs of binary convolutions (any
:class:`models.binary.BinaryConv2d`), ``flops`` = MACs of every other convolution, linear or
matmul. Two totals are reported:

* ``ops``      = BOPs/64 + FLOPs        (full-precision first/last layers)
* ``ops_8bit`` = BOPs/64 + FLOPs/8      (BNext's convention: first and last layers in 8 bit)

Example: ``python -m models.complexity --model bnext_tiny --h 224 --w 224 --batch 1``
"""
import argparse
import json
from typing import Dict, Optional

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from utils.errors import UserError, exit_on_user_error

from ._registry import BACKBONE, build_model, list_models
from .binary import binary_convs


@torch.no_grad()
def measure(model: nn.Module, example_input: torch.Tensor) -> Dict[str, float]:
    """Count parameters and MACs of one inference of ``model`` on ``example_input``.

    The model runs in eval mode (its train/eval flags are restored afterwards). Binary MACs
    are the counter's increase while each binary convolution runs, so nothing is counted twice.
    """
    binary = list(binary_convs(model))
    modes = {m: m.training for m in model.modules()}
    counter = FlopCounterMode(display=False)
    binary_flops = []
    start = {}

    def before(module, args):
        start[module] = counter.get_total_flops()

    def after(module, args, output):
        binary_flops.append(counter.get_total_flops() - start.pop(module))

    hooks = [h for m in binary for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        model.eval()
        with counter:
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    # FlopCounterMode counts 2 FLOPs per multiply-accumulate.
    bops = sum(binary_flops) // 2
    flops = counter.get_total_flops() // 2 - bops
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "binary_params": sum(m.weight.numel() for m in binary),
        "bops": bops,
        "flops": flops,
        "ops": bops / 64 + flops,
        "ops_8bit": bops / 64 + flops / 8,
    }


def human(n: float) -> str:
    """``30.86 M``-style rendering."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n:.4g}"


def format_table(stats: Dict[str, float]) -> str:
    rows = [
        ("parameters", stats["params"]),
        ("  binary", stats["binary_params"]),
        ("  full-precision", stats["params"] - stats["binary_params"]),
        ("BOPs (binary MACs)", stats["bops"]),
        ("FLOPs (other MACs)", stats["flops"]),
        ("OPs = BOPs/64 + FLOPs", stats["ops"]),
        ("OPs = BOPs/64 + FLOPs/8", stats["ops_8bit"]),
    ]
    return "\n".join(f"{name:<26}{human(value):>12}" for name, value in rows)


def build(name: str, num_classes: Optional[int] = None, device: str = "cpu") -> nn.Module:
    """Any registered model on ``device``; ``num_classes`` defaults to ImageNet's 1000 for a bare
    backbone (``bnext_<size>``) and to University-1652's 701 for a retrieval network."""
    if num_classes is None:
        num_classes = 1000 if name in list_models(BACKBONE) else 701
    with torch.device(device):
        return build_model(name, num_classes)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Count parameters, BOPs and FLOPs of one inference.")
    parser.add_argument("--model", required=True,
                        help=f"a bare ImageNet backbone ({', '.join(list_models(BACKBONE))}) or a retrieval network "
                             f"({', '.join(list_models())})")
    parser.add_argument("--h", type=int, default=256, help="input height")
    parser.add_argument("--w", type=int, default=256, help="input width")
    parser.add_argument("--batch", type=int, default=2,
                        help="images per inference (2 = one satellite and one drone view)")
    parser.add_argument("--num_classes", type=int, default=None,
                        help="classifier outputs (default 1000 for bnext_*, 701 (University-1652) otherwise)")
    parser.add_argument("--device", choices=("cpu", "meta"), default="cpu",
                        help="'meta' counts from shapes only, without allocating weights (fast for large models)")
    parser.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    args = parser.parse_args(argv)
    if args.model not in list_models(None):
        raise UserError(f"--model {args.model!r} is not a known model; choose one of: {', '.join(list_models(None))}")
    for flag in ("h", "w", "batch"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    return args


@exit_on_user_error
def main(argv=None) -> None:
    args = parse_args(argv)
    model = build(args.model, args.num_classes, args.device)
    example = torch.zeros(args.batch, 3, args.h, args.w, device=args.device)
    stats = measure(model, example)
    if args.json:
        print(json.dumps(stats))
    else:
        print(f"{args.model} at {args.batch}x3x{args.h}x{args.w}")
        print(format_table(stats))


if __name__ == "__main__":
    main()
