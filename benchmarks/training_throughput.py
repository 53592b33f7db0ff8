"""Training throughput (satellite+drone pairs per second) of the student and the teacher, and the
share of step time spent waiting for data with the default ``--num_workers``.

Each model runs real ``train.py`` steps (the same ``Trainer.train_step``: two-view forward, all
losses, backward, optimizer steps) on synthetic University-1652-layout data generated into a
temporary folder. Data wait = time blocked in ``next(loader)``; compute = the step itself.

Run from the repository root: ``python -m benchmarks.training_throughput [--size 256 --steps 6]``.
"""
import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import train
from datasets.synthetic import generate_university
from training.distributed import DistributedContext
from training.state import EpochStats
from training.trainer import Trainer
from utils.device import DEVICE_CHOICES, device_label, resolve_device


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="bicrossnet_bnext_tiny", help="student model name")
    parser.add_argument("--teacher", default="mccg_convnext_tiny", help="teacher model name")
    parser.add_argument("--size", type=int, default=256, help="training input height and width")
    parser.add_argument("--batchsize", type=int, default=8, help="classes (pairs) per step")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per model (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--num_workers", type=int, default=None,
                        help="data-loading processes (default: train.py's default, min(8, cores))")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="auto picks CUDA when present")
    parser.add_argument("--amp", action="store_true", help="float16 autocast + GradScaler on CUDA, as train.py --amp")
    parser.add_argument("--data_dir", default=None,
                        help="University-1652-layout train folder (default: generate synthetic data)")
    return parser.parse_args(argv)


def measure(model: str, data_dir: str, run_dir: Path, opts) -> dict:
    """Time ``opts.steps`` training steps of ``model``; returns pairs/s and the data-wait share."""
    optimizer = "sgd" if model.startswith("mccg_") else "adamlion"
    argv = ["--name", model, "--checkpoint_dir", str(run_dir), "--data_dir", data_dir, "--model", model,
            "--optimizer", optimizer, "--h", str(opts.size), "--w", str(opts.size), "--batchsize",
            str(opts.batchsize), "--bigradual_n1", "0", "--bigradual_n2", "0", "--device", opts.device,
            "--sample_num", str(opts.steps + opts.warmup)] + (["--amp"] if opts.amp else [])
    if opts.num_workers is not None:
        argv += ["--num_workers", str(opts.num_workers)]
    args = train.parse_args(argv)
    (run_dir / model).mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("benchmark")
    trainer = Trainer(args, DistributedContext(), run_dir / model, logger)
    trainer._enter_phase(0)
    trainer.model.train()
    stats = EpochStats()
    loader = iter(trainer._loader(0))
    waits, computes = [], []
    for step in range(opts.warmup + opts.steps):
        start = time.perf_counter()
        *views, labels = next(loader)
        fetched = time.perf_counter()
        trainer.train_step(views, labels, stats, 0, step)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        done = time.perf_counter()
        if step >= opts.warmup:
            waits.append(fetched - start)
            computes.append(done - fetched)
    total = sum(waits) + sum(computes)
    return {"model": model, "workers": args.num_workers, "pairs_per_s": opts.batchsize * opts.steps / total,
            "step_s": statistics.median(w + c for w, c in zip(waits, computes)),
            "wait_share": sum(waits) / total}


def main(argv=None) -> None:
    opts = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = opts.data_dir
        if data_dir is None:
            generate_university(tmp / "data", train_places=opts.batchsize * (opts.steps + opts.warmup),
                                test_places=1, distractor_places=0, drones_per_place=4, image_size=256, seed=0)
            data_dir = str(tmp / "data" / "train")
        rows = [measure(name, data_dir, tmp / "runs", opts) for name in (opts.student, opts.teacher)]
    device = resolve_device(opts.device)
    where = f"CUDA: {device_label(device)}" if device.type == "cuda" else "CPU"
    precision = "amp-fp16" if opts.amp and device.type == "cuda" else "fp32"
    print(f"Training throughput on {where} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), "
          f"{precision}, {opts.size}x{opts.size}, batch {opts.batchsize} pairs, {opts.steps} timed steps\n")
    print("| model | data workers | pairs / s | median step s | data-wait share |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['workers']} | {r['pairs_per_s']:.2f} | {r['step_s']:.2f} | "
              f"{100 * r['wait_share']:.1f}% |")
    student, teacher = rows
    print(f"\nstudent / teacher training throughput: {student['pairs_per_s'] / teacher['pairs_per_s']:.2f}x; "
          f"data-wait target: under 10% of step time")


if __name__ == "__main__":
    main()
