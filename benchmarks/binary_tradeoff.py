"""Float against binary descriptors for the trained student and its teacher, over seeds, on the
synthetic University-1652 layout (docs/binary_search.md).

    python -m benchmarks.binary_tradeoff --out demo_runs/binary_tradeoff

The runs are those of ``python -m benchmarks.synthetic_recipe --variants full`` with the same
``--out`` (the teacher and the full student recipe distilled from it, one pair per seed); this
script trains whichever are missing through it, with its default budget, then evaluates each run
with ``test.py --descriptor binary`` (no flip TTA, as the recipe's float evaluation) and reads both
records from the run's results.json. The table gives mean ± sample standard deviation over the
seeds of R@1 and AP in both directions, and the paired difference binary − float (per seed, then
mean ± std), so the spread between seeds does not hide a consistent loss.
"""
import argparse
import statistics
from pathlib import Path

from benchmarks import synthetic_recipe
from benchmarks.recipe_tables import DIRECTIONS, METRICS, mean_std
from evaluation.records import RESULTS_FILE, latest_record, load_results

RUNS = (("full", "student (BiCrossNet-T, full recipe)"), ("teacher", "teacher (ConvNeXt, from scratch)"))
DESCRIPTORS = ("float", "binary")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_runs/binary_tradeoff", help="synthetic_recipe's --out (data and runs)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds to train (if missing) and evaluate")
    p.add_argument("--size", type=int, default=64, help="input size the runs were trained and tested at")
    p.add_argument("--no_train", action="store_true", help="only evaluate the seeds whose runs are finished")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each test.py process")
    return p.parse_args(argv)


def record(run_dir: Path, direction: str, descriptor: str, size: int):
    return latest_record(load_results(run_dir / RESULTS_FILE), "university", direction, h=size, w=size, flip=False,
                         descriptor=descriptor)


def evaluate_binary(run_dir: Path, data: Path, opts) -> None:
    """``test.py --descriptor binary`` in both directions unless the run has those records."""
    if all(record(run_dir, direction, "binary", opts.size) for direction, _ in DIRECTIONS):
        return
    synthetic_recipe.run(["test.py", "--name", run_dir.name, "--checkpoint_dir", str(run_dir.parent), "--test_dir",
                          str(data / "test"), "--mode", "both", "--no_flip", "--num_workers", "0", "--device", "cpu",
                          "--descriptor", "binary"], opts.threads)


def finished_seeds(out: Path, seeds) -> list:
    return [s for s in seeds if all((out / f"seed{s}" / name / "recipe_timing.json").is_file() for name, _ in RUNS)]


def collect(out: Path, seeds, opts) -> dict:
    """``{(run, descriptor): {"D→S R@1": [per seed], ...}}`` after evaluating what is missing."""
    values = {}
    for seed in seeds:
        for name, _ in RUNS:
            run_dir = out / f"seed{seed}" / name
            evaluate_binary(run_dir, out / "data", opts)
            for descriptor in DESCRIPTORS:
                for direction, short in DIRECTIONS:
                    entry = record(run_dir, direction, descriptor, opts.size)
                    for metric, label in METRICS:
                        values.setdefault((name, descriptor), {}).setdefault(f"{short} {label}", []).append(
                            entry[metric])
    return values


def summary(numbers: list) -> dict:
    return {"mean": statistics.mean(numbers), "std": statistics.stdev(numbers) if len(numbers) > 1 else None}


def signed(value: dict) -> str:
    return f"{value['mean']:+.2f}" + ("" if value["std"] is None else f" ± {value['std']:.2f}")


def table(values: dict, seeds) -> str:
    columns = [f"{short} {label}" for _, short in DIRECTIONS for _, label in METRICS]
    lines = [f"seeds {' '.join(map(str, seeds))}; mean ± standard deviation over the seeds", "",
             "| run | descriptor | " + " | ".join(columns) + " |", "|---|---|" + "---:|" * len(columns)]
    for name, label in RUNS:
        for descriptor in DESCRIPTORS:
            cells = [mean_std(summary(values[name, descriptor][column])) for column in columns]
            lines.append(f"| {label} | {descriptor} | " + " | ".join(cells) + " |")
        deltas = [signed(summary([b - f for b, f in zip(values[name, "binary"][column], values[name, "float"][column])]))
                  for column in columns]
        lines.append(f"| {label} | binary − float (paired) | " + " | ".join(deltas) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    opts = parse_args(argv)
    out = Path(opts.out).resolve()
    if not opts.no_train:
        synthetic_recipe.main(["--out", str(out), "--variants", "full", "--seeds", *map(str, opts.seeds)])
    seeds = finished_seeds(out, opts.seeds)
    if not seeds:
        raise SystemExit(f"no seed of {opts.seeds} has finished runs under {out}")
    values = collect(out, seeds, opts)
    print("\n" + table(values, seeds))
    student = [b - f for b, f in zip(values["full", "binary"]["D→S R@1"], values["full", "float"]["D→S R@1"])]
    print(f"\nstudent D→S R@1, binary − float: {statistics.mean(student):+.2f} (target: within 2 points)")


if __name__ == "__main__":
    main()
