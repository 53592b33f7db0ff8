"""The BiCrossNet recipe against its ablations on synthetic University-1652-layout data.

Trains one teacher and four students through the real ``train.py`` / ``test.py`` entry points on
the same data and seeds, evaluates each in both directions and prints a Markdown table:

- ``full``: distillation + bi-gradual unfreezing + Lion (binary weights) / Adam (the rest);
- ``no_kd``: the same without distillation;
- ``no_bigradual``: everything trains from the first epoch (n1 = n2 = 0);
- ``single_optimizer``: one Adam optimizer for all parameters, binary latent weights included.

Run from the repository root: ``python -m benchmarks.synthetic_recipe [--epochs 8 --seeds 1 2]``.
Runs are kept under ``--out`` so a second call only re-prints the table. ``--data_dir`` and
``--teacher_path`` reuse data and a teacher run made earlier (e.g. by ``make demo``, whose settings
are the defaults here) instead of generating and training them again.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIRECTIONS = (("Drone->Satellite", "D→S"), ("Satellite->Drone", "S→D"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_runs/synthetic_recipe", help="data and runs go here")
    parser.add_argument("--data_dir", default=None,
                        help="existing University-1652-layout dataset root (default: generate one under --out)")
    parser.add_argument("--teacher_path", default=None,
                        help="existing teacher run trained on that data (default: train one per seed)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of every run")
    parser.add_argument("--sample_num", type=int, default=4, help="draws of each class per epoch")
    parser.add_argument("--size", type=int, default=64, help="training and test input size")
    parser.add_argument("--lr", type=float, default=0.001, help="learning rate of every run")
    parser.add_argument("--teacher", default="mccg_convnext_atto", help="teacher model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="one set of runs per seed")
    parser.add_argument("--num_workers", type=int, default=2, help="data-loading processes")
    return parser.parse_args(argv)


def students(opts):
    """Ablation name → extra train.py flags (distillation added where the recipe has it)."""
    n1, n2 = max(1, opts.epochs // 8), max(2, opts.epochs // 4)
    phases = ["--bigradual_n1", str(n1), "--bigradual_n2", str(n2)]
    return {
        "full": ["--optimizer", "adamlion", *phases, "--kd"],
        "no_kd": ["--optimizer", "adamlion", *phases],
        "no_bigradual": ["--optimizer", "adamlion", "--bigradual_n1", "0", "--bigradual_n2", "0", "--kd"],
        "single_optimizer": ["--optimizer", "adam", *phases, "--kd"],
    }


def run(cmd):
    print("$", " ".join(cmd), flush=True)
    subprocess.run([sys.executable, *cmd], cwd=REPO, check=True, stdout=subprocess.DEVNULL)


def train_and_test(name, flags, opts, data, ckpt, seed):
    run_dir = ckpt / name
    if not (run_dir / "results.json").is_file():
        run(["train.py", "--name", name, "--checkpoint_dir", str(ckpt), "--data_dir", str(data / "train"),
             "--h", str(opts.size), "--w", str(opts.size), "--epochs", str(opts.epochs), "--steps",
             str(opts.epochs * 3 // 4), "--sample_num", str(opts.sample_num), "--lr", str(opts.lr), "--seed",
             str(seed), "--num_workers", str(opts.num_workers), "--device", "cpu", "--overwrite", *flags])
        run(["test.py", "--name", name, "--checkpoint_dir", str(ckpt), "--test_dir", str(data / "test"),
             "--mode", "both", "--num_workers", str(opts.num_workers), "--device", "cpu"])
    return read_results(run_dir)


def read_results(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    return {short: results[f"university/{direction}"] for direction, short in DIRECTIONS}


def main(argv=None):
    opts = parse_args(argv)
    out = Path(opts.out).resolve()
    data = Path(opts.data_dir).resolve() if opts.data_dir else out / "data"
    if not (data / "train").is_dir():
        run(["-m", "datasets.synthetic", "--layout", "university", "--out", str(data)])
    table = {}
    for seed in opts.seeds:
        ckpt = out / f"seed{seed}"
        if opts.teacher_path:
            teacher = Path(opts.teacher_path).resolve()
            table.setdefault(f"teacher ({teacher.name})", []).append(read_results(teacher))
        else:
            teacher = ckpt / "teacher"
            teacher_flags = ["--model", opts.teacher, "--optimizer", "adam", "--bigradual_n1", "0",
                             "--bigradual_n2", "0"]
            table.setdefault(f"teacher ({opts.teacher})", []).append(
                train_and_test("teacher", teacher_flags, opts, data, ckpt, seed))
        for name, flags in students(opts).items():
            flags = [f for f in flags if f != "--kd"] + (["--teacher_path", str(teacher)] if "--kd" in flags else [])
            table.setdefault(f"student {name}", []).append(train_and_test(name, flags, opts, data, ckpt, seed))

    print(f"\nSynthetic University-1652 layout (40 train / 30 test / 10 distractor places), {opts.size}×{opts.size}, "
          f"{opts.epochs} epochs × {opts.sample_num} draws per class, lr {opts.lr}, seeds {opts.seeds}; "
          f"mean over seeds (chance R@1: D→S 2.5%, S→D ≈ 2.5%)\n")
    print("| run | D→S R@1 | D→S AP | S→D R@1 | S→D AP |")
    print("|---|---:|---:|---:|---:|")
    for name, per_seed in table.items():
        cells = [f"{statistics.mean(r[d][m] for r in per_seed):.2f}"
                 for _, d in DIRECTIONS for m in ("recall@1", "ap")]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
