"""Eval-mode feature extraction speed of the binary student and the full-precision teacher on CPU.

PyTorch has no 1-bit convolution kernel: a binary convolution runs as a float convolution with
+-1 weights (recomputed from the latent weights at every call), so the student's 64x fewer
operations (see ``benchmarks.complexity_table``) do not show up here. The figures measure what a
user of this code gets, not what a bit-packed inference engine would.

Run from the repository root: ``python -m benchmarks.feature_throughput [--batch 4]``.
"""
import argparse
import statistics
import time

import torch

from models import build_model

NUM_CLASSES = 701  # University-1652; only the unused classifier depends on it


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="bicrossnet_bnext_tiny", help="student model name")
    parser.add_argument("--teacher", default="mccg_convnext_tiny", help="teacher model name")
    parser.add_argument("--size", type=int, default=256, help="input height and width")
    parser.add_argument("--batch", type=int, default=4, help="images per forward pass")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forward passes first")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per model (best and median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args(argv)


@torch.inference_mode()
def time_interleaved(models: dict, x: torch.Tensor, warmup: int, repeats: int) -> dict:
    """Wall times of eval forward passes per model, the models taking turns in every round so
    that load from other processes on a shared machine hits both alike."""
    times = {name: [] for name in models}
    for round_index in range(warmup + repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model(x)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    models = {name: build_model(name, NUM_CLASSES).eval() for name in (args.student, args.teacher)}
    times = time_interleaved(models, x, args.warmup, args.repeats)
    print(f"CPU, {torch.get_num_threads()} threads, batch {args.batch} at {args.size}x{args.size}, "
          f"{args.repeats} timed passes each after {args.warmup} warm-up, models alternating\n")
    print("| model | best s / batch | median s / batch | images / s (best) | images / s (median) |")
    print("|---|---:|---:|---:|---:|")
    best, median = {}, {}
    for name, samples in times.items():
        best[name], median[name] = min(samples), statistics.median(samples)
        print(f"| {name} | {best[name]:.3f} | {median[name]:.3f} | {args.batch / best[name]:.2f} | "
              f"{args.batch / median[name]:.2f} |")
    print(f"\nstudent / teacher throughput: {best[args.teacher] / best[args.student]:.2f}x (best), "
          f"{median[args.teacher] / median[args.student]:.2f}x (median)")


if __name__ == "__main__":
    main()
