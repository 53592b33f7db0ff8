"""Eval-mode feature extraction speed of the binary student and the full-precision teacher.

PyTorch has no 1-bit convolution kernel: a binary convolution runs as a float convolution with
+-1 weights (recomputed from the latent weights at every call), so the student's 64x fewer
operations (see ``benchmarks.complexity_table``) do not show up here. The figures measure what a
user of this code gets, not what a bit-packed inference engine would.

On CUDA (``--device auto`` picks it when present) each model is also timed under float16
autocast, and every pass ends with a device synchronisation so the times are real.

Run from the repository root: ``python -m benchmarks.feature_throughput [--batch 4] [--device cpu]``.
"""
import argparse
import statistics
import time

import torch

from models import build_model
from utils.device import DEVICE_CHOICES, configure_precision, device_label, resolve_device

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
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="auto picks CUDA when present")
    return parser.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_interleaved(models: dict, x: torch.Tensor, warmup: int, repeats: int) -> dict:
    """Wall times of eval forward passes per ``(model, amp)`` entry, the entries taking turns in
    every round so that load from other processes on a shared machine hits all alike."""
    times = {key: [] for key in models}
    for round_index in range(warmup + repeats):
        for (name, amp), model in models.items():
            synchronize(x.device)
            start = time.perf_counter()
            with torch.autocast(x.device.type, dtype=torch.float16, enabled=amp):
                model(x)
            synchronize(x.device)
            if round_index >= warmup:
                times[name, amp].append(time.perf_counter() - start)
    return times


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = configure_precision(device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    networks = {name: build_model(name, NUM_CLASSES).eval().to(device) for name in (args.student, args.teacher)}
    amps = (False, True) if device.type == "cuda" else (False,)
    models = {(name, amp): net for name, net in networks.items() for amp in amps}
    times = time_interleaved(models, x, args.warmup, args.repeats)
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"{device_label(device)}{threads}, batch {args.batch} at {args.size}x{args.size}, "
          f"{args.repeats} timed passes each after {args.warmup} warm-up, models alternating\n")
    print("| model | precision | best s / batch | median s / batch | images / s (best) | images / s (median) |")
    print("|---|---|---:|---:|---:|---:|")
    best, median = {}, {}
    for (name, amp), samples in times.items():
        key = name, amp
        best[key], median[key] = min(samples), statistics.median(samples)
        print(f"| {name} | {'amp-fp16' if amp else precision} | {best[key]:.3f} | {median[key]:.3f} | "
              f"{args.batch / best[key]:.2f} | {args.batch / median[key]:.2f} |")
    for amp in amps:
        student, teacher = (args.student, amp), (args.teacher, amp)
        print(f"\nstudent / teacher throughput ({'amp-fp16' if amp else precision}): "
              f"{best[teacher] / best[student]:.2f}x (best), {median[teacher] / median[student]:.2f}x (median)")


if __name__ == "__main__":
    main()
