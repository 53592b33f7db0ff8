#!/usr/bin/env python
"""One run's evaluations side by side per device and precision (the spread scripts/gpu_check.sh
reports): Recall@1 and AP of both directions from its ``results.json``.

    python scripts/precision_table.py checkpoints/RUN
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.records import RESULTS_FILE, load_results  # noqa: E402
from utils.errors import exit_on_user_error  # noqa: E402

DIRECTIONS = ("Satellite->Drone", "Drone->Satellite")


@exit_on_user_error
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="run directory holding results.json")
    results = load_results(parser.parse_args(argv).run_dir / RESULTS_FILE)
    print("| device | precision | S→D R@1 | S→D AP | D→S R@1 | D→S AP |")
    print("|---|---|---:|---:|---:|---:|")
    for device, precision in sorted({(r["device"], r["precision"]) for r in results.values()}):
        same = {r["direction"]: r for r in results.values() if (r["device"], r["precision"]) == (device, precision)}
        cells = [f"{same[d][k]:.2f}" if d in same else "—" for d in DIRECTIONS for k in ("recall@1", "ap")]
        print(f"| {device} | {precision} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
