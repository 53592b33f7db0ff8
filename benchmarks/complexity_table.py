"""Parameters and operations of the BiCrossNet students and the MCCG teachers, as Markdown tables.

Counts come from :func:`models.complexity.measure` (``torch.utils.flop_counter``) on the meta
device, so even BNext-L is counted from shapes in seconds. BNN convention: BOPs = MACs of binary
convolutions, FLOPs = every other MAC; OPs = BOPs/64 + FLOPs (full-precision first and last
layers) or BOPs/64 + FLOPs/8 (BNext's 8-bit first and last layers; meaningless for a
full-precision network, so left blank there).

Two tables: the cross-view networks at one 2x3x256x256 inference (a satellite and a drone view,
University-1652's 701 classes) beside the paper's figure, and the bare BNext ImageNet backbones at
1x3x224x224 beside BNext's published OPs, which checks the counting itself.

Run from the repository root: ``python -m benchmarks.complexity_table``.
"""
import argparse
import math
import time

import torch

from models.complexity import build, human, measure

STUDENTS = [f"bicrossnet_bnext_{size}" for size in ("tiny", "small", "middle", "large")]
TEACHERS = ["mccg_convnext_atto", "mccg_convnext_tiny"]
# docs/method.md section 7: BNext README, OPs = BOPs/64 + FLOPs/8 at 1x3x224x224.
BNEXT_PUBLISHED_OPS = {"bnext_tiny": 0.077e9, "bnext_small": 0.172e9, "bnext_middle": 0.317e9, "bnext_large": 0.819e9}
# docs/method.md section 7: University-1652 Drone->Satellite AP vs OPs for one 2x3x256x256 inference,
# read off the BiCrossNet paper's plot (no printed table is public).
PAPER_POINTS = [("BiCrossNet, smaller variant", 0.835, 3.6e8, STUDENTS),
                ("BiCrossNet, larger variant", 0.873, 2.6e9, STUDENTS),
                ("MCCG (ConvNeXt-T teacher)", 0.913, 3e10, TEACHERS)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--h", type=int, default=256, help="input height of the cross-view networks")
    parser.add_argument("--w", type=int, default=256, help="input width of the cross-view networks")
    parser.add_argument("--batch", type=int, default=2, help="images per inference (2 = satellite + drone view)")
    parser.add_argument("--num_classes", type=int, default=701, help="classes of the MCCG classifiers (701: University-1652)")
    parser.add_argument("--device", choices=("meta", "cpu"), default="meta",
                        help="'meta' counts from shapes only; 'cpu' allocates and runs the real networks (slow)")
    return parser.parse_args(argv)


def measure_all(names, shape, num_classes, device: str) -> dict:
    return {name: measure(build(name, num_classes, device), torch.zeros(*shape, device=device)) for name in names}


def complexity_table(stats: dict) -> str:
    lines = ["| model | params | binary | full-precision | BOPs | FLOPs | OPs = BOPs/64 + FLOPs | OPs = BOPs/64 + FLOPs/8 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in stats.items():
        ops_8bit = human(s["ops_8bit"]) if s["binary_params"] else "—"
        lines.append(f"| {name} | {human(s['params'])} | {human(s['binary_params'])} | "
                     f"{human(s['params'] - s['binary_params'])} | {human(s['bops'])} | {human(s['flops'])} | "
                     f"{human(s['ops'])} | {ops_8bit} |")
    return "\n".join(lines)


def closest(stats: dict, names, ops: float, key: str) -> str:
    """The network of ``names`` whose OPs (under ``key``'s convention) is nearest on a log scale."""
    name = min(names, key=lambda n: abs(math.log(stats[n][key] / ops)))
    return f"{name} ({human(stats[name][key])}, {stats[name][key] / ops:.2f}x)"


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    shape = (args.batch, 3, args.h, args.w)
    stats = measure_all(STUDENTS + TEACHERS, shape, args.num_classes, args.device)
    print(f"## Cross-view networks at {args.batch}x3x{args.h}x{args.w}, {args.num_classes} classes\n")
    print(complexity_table(stats))

    print("\n## Paper figure (University-1652 Drone->Satellite AP vs OPs, read off the plot) and the nearest measured network\n")
    print("| paper point | AP | OPs | nearest, OPs = BOPs/64 + FLOPs | nearest, OPs = BOPs/64 + FLOPs/8 |")
    print("|---|---:|---:|---|---|")
    for label, ap, ops, family in PAPER_POINTS:
        nearest_8bit = closest(stats, family, ops, "ops_8bit") if family is STUDENTS else "—"
        print(f"| {label} | {ap:.3f} | {human(ops)} | {closest(stats, family, ops, 'ops')} | {nearest_8bit} |")
    print("\nMACs are counted once each; a figure in FLOPs = 2 x MACs doubles the FLOPs column.")

    print("\n## Bare BNext ImageNet backbones at 1x3x224x224, 1000 classes, against BNext's published OPs\n")
    bnext_stats = measure_all(BNEXT_PUBLISHED_OPS, (1, 3, 224, 224), 1000, args.device)
    print("| backbone | params | binary | BOPs | FLOPs | OPs = BOPs/64 + FLOPs/8 | published OPs | measured / published |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, published in BNEXT_PUBLISHED_OPS.items():
        s = bnext_stats[name]
        print(f"| {name} | {human(s['params'])} | {human(s['binary_params'])} | {human(s['bops'])} | {human(s['flops'])} | "
              f"{human(s['ops_8bit'])} | {human(published)} | {s['ops_8bit'] / published:.3f} |")
    print(f"\n(counted on the {args.device} device in {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
