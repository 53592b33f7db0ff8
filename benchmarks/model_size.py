"""File size and load time of packed model files against float checkpoints.

A BNext-T student and a ConvNeXt-T teacher (701 classes, University-1652) are built fresh (no
training needed: sizes depend only on the architecture) and written to a temporary directory
twice: as a run directory the way train.py leaves it (``opts.yaml`` + ``last.pth`` holding the
float state dict only, without optimizer state) and as a packed file (``export_packed``).
Loading is timed end to end: the float run with ``runs.checkpoints.load_trained_model`` and the packed
file with ``runs.packed.load_packed`` (which also unpacks the bits and checks every binary
layer's forward weights). The teacher has no binary layers, so packing cannot shrink it.

Run from the repository root: ``python -m benchmarks.model_size [--repeats 3]``.
"""
import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from models import build_model
from runs.claim import save_opts
from runs.packed import binary_weight_bytes, export_packed, load_packed
from runs.checkpoints import load_trained_model
from runs.layout import LAST_CHECKPOINT
from utils.files import save_checkpoint

NUM_CLASSES = 701
META = {"h": 256, "w": 256, "dataset": "university", "altitude": None}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="bicrossnet_bnext_tiny", help="binary student model name")
    parser.add_argument("--teacher", default="mccg_convnext_tiny", help="full-precision teacher model name")
    parser.add_argument("--repeats", type=int, default=3, help="timed loads of each file (best and median reported)")
    return parser.parse_args(argv)


def write_files(name: str, root: Path) -> dict:
    """A float run directory and a packed file for a fresh ``name``; returns paths and binary sizes."""
    model = build_model(name, NUM_CLASSES).eval()
    run_dir = root / name
    save_opts(run_dir, {"model": name, "model_options": {}, "num_classes": NUM_CLASSES, **META})
    save_checkpoint({"model": model.state_dict()}, run_dir / LAST_CHECKPOINT)
    packed = root / f"{name}_packed.pt"
    export_packed(model, name, {}, NUM_CLASSES, META, packed)
    return {"run_dir": run_dir, "float": run_dir / LAST_CHECKPOINT, "packed": packed, **binary_weight_bytes(model)}


def time_loads(files: dict, repeats: int) -> dict:
    """Seconds per load; float and packed loads take turns so machine load hits both alike."""
    loaders = {"float": lambda: load_trained_model(files["run_dir"]), "packed": lambda: load_packed(files["packed"])}
    times = {kind: [] for kind in loaders}
    for _ in range(repeats):
        for kind, load in loaders.items():
            start = time.perf_counter()
            load()
            times[kind].append(time.perf_counter() - start)
    return times


def mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def main(argv=None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = {}
        for name in (args.student, args.teacher):
            files = write_files(name, root)
            rows[name] = files, time_loads(files, args.repeats)
        sizes = {name: {kind: os.path.getsize(files[kind]) for kind in ("float", "packed")}
                 for name, (files, _) in rows.items()}

    print(f"{args.repeats} loads of each file, CPU; float = load_trained_model(run dir), packed = load_packed(file)\n")
    print("| model | binary weights float32 MiB | binary weights packed MiB | float file MiB | packed file MiB "
          "| size ratio | float load s (best / median) | packed load s (best / median) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (files, times) in rows.items():
        size = sizes[name]
        loads = {kind: f"{min(t):.2f} / {statistics.median(t):.2f}" for kind, t in times.items()}
        print(f"| {name} | {mib(files['float32_bytes'])} | {mib(files['packed_bytes'])} | {mib(size['float'])} | "
              f"{mib(size['packed'])} | {size['float'] / size['packed']:.2f}x | {loads['float']} | {loads['packed']} |")
    student, teacher = sizes[args.student], sizes[args.teacher]
    binary = rows[args.student][0]
    print(f"\nstudent binary weights: {binary['float32_bytes'] / binary['packed_bytes']:.0f}x smaller packed; "
          f"student file: {student['float'] / student['packed']:.2f}x smaller packed; "
          f"float teacher / packed student: {teacher['float'] / student['packed']:.2f}x")


if __name__ == "__main__":
    main()
