"""Export a trained run as a packed model file: binary conv weights at 1 bit each.

The file is rebuilt with :func:`runs.packed.load_packed` (``test.py --packed FILE``). After
writing it, the export reloads it, compares eval features with the float checkpoint's on a
random batch at the run's input size, and prints what the packing saved and how fast the packed
file runs on this CPU with each engine (``--speed_batch``) at the run's input size, against the
``--teacher`` run when given. ``--speed_reference MODEL`` adds the comparison the paper makes: the
bit-packed engines at ``--speed_size`` (256) against a full-precision network built with random
weights (speed does not depend on them), e.g. ``mccg_convnext_tiny``, the paper's ConvNeXt-T
teacher. ``benchmarks/feature_throughput.py`` is the full comparison (thread counts, batch sizes,
``torch.compile`` and ONNX Runtime teachers, where the time goes).

Example: ``python export.py --name bicrossnet --teacher mccg_teacher --speed_reference mccg_convnext_tiny``
"""
import argparse
import os
import time
from pathlib import Path
from typing import Optional

import torch

from models import bitpacked, build_model, list_models
from runs.checkpoints import load_checkpoint, load_opts, load_run, load_trained_model, resolve_run
from runs.layout import run_folder
from runs.packed import ENGINES, binary_weight_bytes, export_packed, load_packed, serialized_bytes
from utils.cli import HelpFormatter, add_checkpoint_dir
from utils.errors import UserError, exit_on_user_error

EXTRA_META = ("h", "w", "dataset", "altitude")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--name", required=True, help="run name: the run directory is <checkpoint_dir>/<name>")
    add_checkpoint_dir(parser)
    parser.add_argument("--which_epoch", default="last", help="'last' (last.pth) or an epoch number N (net_N.pth)")
    parser.add_argument("--out", default=None,
                        help="packed file to write (default <run_dir>/<checkpoint>_packed.pt, e.g. last_packed.pt)")
    parser.add_argument("--teacher", default=None,
                        help="teacher run (name under --checkpoint_dir, or a run directory) to list its size beside")
    parser.add_argument("--verify_batch", type=int, default=2, help="random images compared after reloading")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random verification batch")
    parser.add_argument("--speed_batch", type=int, default=1,
                        help="images per forward pass of the speed measurements (0: skip them)")
    parser.add_argument("--speed_reference", default=None, metavar="MODEL",
                        help="also time the bit-packed engines at --speed_size against this full-precision model "
                             "with random weights (mccg_convnext_tiny: the paper's ConvNeXt-T teacher)")
    parser.add_argument("--speed_size", type=int, default=256,
                        help="input height and width of the --speed_reference comparison (a multiple of 32)")
    args = parser.parse_args(argv)
    if args.speed_reference is not None and args.speed_reference not in list_models():
        raise UserError(f"--speed_reference {args.speed_reference!r} is not a model; expected one of "
                        f"{', '.join(list_models())}")
    if args.speed_size < 32 or args.speed_size % 32:
        raise UserError(f"--speed_size must be a positive multiple of 32 (the networks downsample 32 times), "
                        f"got {args.speed_size}")
    if args.verify_batch < 1:
        raise UserError(f"--verify_batch must be a positive integer, got {args.verify_batch}")
    if args.speed_batch < 0:
        raise UserError(f"--speed_batch must be >= 0, got {args.speed_batch}")
    return args


def mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def checkpoint_sizes(path: Path, checkpoint: dict) -> dict:
    """Float weights alone (a bare state dict) and the whole training checkpoint file."""
    return {"weights": serialized_bytes(checkpoint["model"]), "file": os.path.getsize(path)}


def teacher_run(teacher: str, checkpoint_dir: str) -> Path:
    """The teacher's run directory: a name under ``checkpoint_dir``, or a path."""
    candidate = Path(checkpoint_dir) / teacher
    return resolve_run(candidate if candidate.is_dir() else Path(teacher))[0]


def teacher_sizes(run_dir: Path):
    """``(model name, sizes)`` of the teacher run's last checkpoint; the network is not built."""
    path = resolve_run(run_dir)[1]
    return load_opts(run_dir)["model"], checkpoint_sizes(path, load_checkpoint(path))


def size_table(label: str, model: torch.nn.Module, sizes: dict, packed_file: int, teacher=None) -> str:
    binary = binary_weight_bytes(model)
    rows = [
        (f"{label}: float weights (state dict only)", mib(sizes["weights"]), ""),
        (f"{label}: training checkpoint file", mib(sizes["file"]), ""),
        (f"{label}: packed file", mib(packed_file),
         f"{sizes['weights'] / packed_file:.2f}x smaller than float weights" if binary["binary_params"]
         else "no binary layers: the packed file holds the float weights"),
        (f"binary conv weights ({binary['binary_params'] / 1e6:.2f} M), float32", mib(binary["float32_bytes"]), ""),
        ("binary conv weights, packed", mib(binary["packed_bytes"]),
         f"{binary['float32_bytes'] / binary['packed_bytes']:.0f}x smaller" if binary["packed_bytes"] else "no binary layers"),
    ]
    if teacher is not None:
        name, t_sizes = teacher
        rows += [(f"teacher {name}: float weights (state dict only)", mib(t_sizes["weights"]),
                  f"{t_sizes['weights'] / packed_file:.2f}x the packed student"),
                 (f"teacher {name}: training checkpoint file", mib(t_sizes["file"]), "")]
    lines = ["| what | size | ratio |", "|---|---:|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


@torch.inference_mode()
def max_feature_difference(model_a, model_b, batch: int, h: int, w: int, seed: int) -> float:
    x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
    return (model_a(x) - model_b(x)).abs().max().item()


@torch.inference_mode()
def images_per_second(model, batch: int, h: int, w: int, repeats: int = 3) -> float:
    """Best of ``repeats`` timed forward passes of a random batch, after one untimed warm-up."""
    x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(0))
    model(x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        best = min(best, time.perf_counter() - start)
    return batch / best


def packed_engines(path: Path) -> dict:
    """``{engine: model}``: the packed file loaded on every engine this machine runs it on (the
    bit-packed ones only for BNext students where their C++ ops build)."""
    models = {}
    for engine in ENGINES:
        if engine != "float" and not bitpacked.available():
            continue
        try:
            models[engine] = load_packed(path, engine=engine)[0]
        except UserError:  # not a BNext student: the bit-packed engines do not apply
            continue
    return models


def speed_table(students: dict, batch: int, h: int, w: int, reference=None) -> str:
    """Images per second of each ``{engine: model}`` student and of ``reference``, a ``(label, model)``
    pair; the ratios are against the reference, or the first engine without one."""
    rows = [(f"packed student, {engine} engine", images_per_second(model, batch, h, w))
            for engine, model in students.items()]
    if reference is not None:
        rows.append((reference[0], images_per_second(reference[1], batch, h, w)))
    base = rows[-1][1] if reference is not None else rows[0][1]
    lines = [f"speed on this CPU ({torch.get_num_threads()} threads, batch {batch}, {h}x{w}, best of 3):",
             f"| network | images / s | vs {reference[0] if reference is not None else 'float engine'} |",
             "|---|---:|---:|"]
    lines += [f"| {name} | {rate:.2f} | {rate / base:.2f}x |" for name, rate in rows]
    return "\n".join(lines)


def refuse_to_replace(out: Path) -> None:
    """An existing ``--out`` may only be an earlier packed export: never a checkpoint, opts.yaml or
    any other file of a run."""
    if not out.exists():
        return
    try:
        load_packed(out)
    except UserError:
        raise UserError(f"--out {out} exists and is not a packed model file; refusing to replace it "
                        f"(choose another file)") from None


@exit_on_user_error
def main(argv=None) -> None:
    args = parse_args(argv)
    run_dir, checkpoint_path = resolve_run(run_folder(args.checkpoint_dir, args.name), args.which_epoch)
    model, opts, checkpoint = load_trained_model(run_dir, args.which_epoch)
    missing = [key for key in ("h", "w") if key not in opts]
    if missing:
        raise UserError(f"{run_dir / 'opts.yaml'} has no {', '.join(missing)} entry; expected opts.yaml written by train.py")
    out = Path(args.out) if args.out else run_dir / f"{checkpoint_path.stem}_packed.pt"
    refuse_to_replace(out)
    export_packed(model, opts["model"], opts["model_options"], opts["num_classes"],
                  {key: opts.get(key) for key in EXTRA_META}, out)
    print(f"wrote {out}")

    packed, meta = load_packed(out)
    diff = max_feature_difference(model, packed, args.verify_batch, meta["h"], meta["w"], args.seed)
    print(f"verification: eval features of {args.verify_batch} random {meta['h']}x{meta['w']} images, "
          f"max abs difference {diff:g}")
    # Both models run on CPU with the same forward weights, so their features must be bitwise equal.
    if diff != 0:
        out.unlink()
        raise UserError(f"the packed model's features differ from {checkpoint_path}'s by {diff:g}; {out} was removed")

    teacher_dir = teacher_run(args.teacher, args.checkpoint_dir) if args.teacher else None
    teacher = teacher_sizes(teacher_dir) if teacher_dir else None
    print(size_table(opts["model"], model, checkpoint_sizes(checkpoint_path, checkpoint), os.path.getsize(out), teacher))
    if args.speed_batch:
        students = packed_engines(out)  # loaded once for both tables
        teacher_model = (f"teacher {teacher_dir.name}", load_run(teacher_dir)) if teacher_dir else None
        print(speed_table(students, args.speed_batch, meta["h"], meta["w"], teacher_model))
        if args.speed_reference:
            deployed = ({engine: students[engine] for engine in bitpacked.ENGINE_NAMES if engine in students}
                        if bitpacked.available() else students)
            reference = build_model(args.speed_reference, opts["num_classes"]).eval()
            print(speed_table(deployed, args.speed_batch, args.speed_size, args.speed_size,
                              (f"{args.speed_reference}, random weights", reference)))

if __name__ == "__main__":
    main()
