#!/usr/bin/env python
"""Side-by-side table of evaluated runs: retrieval metrics from each run's ``results.json`` and the
cost of one inference (parameters, OPs) counted at the paper's 2×3×256×256.

    python scripts/compare_runs.py --checkpoint_dir checkpoints teacher_university bicrossnet_university
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import build_model  # noqa: E402
from models.complexity import human, measure  # noqa: E402
from models.run import load_opts  # noqa: E402
from utils.errors import UserError, exit_on_user_error  # noqa: E402

DIRECTIONS = (("Drone->Satellite", "D→S"), ("Satellite->Drone", "S→D"))


def result_prefix(opts: dict) -> str:
    """The ``results.json`` key prefix test.py uses for the run's own dataset."""
    if opts.get("dataset") == "sues":
        return f"sues/{opts['altitude']}"
    return "university"


def run_row(run_dir: Path, h: int, w: int) -> dict:
    opts = load_opts(run_dir)
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise UserError(f"{results_path} does not exist; evaluate the run with test.py first")
    results = json.loads(results_path.read_text())
    with torch.device("meta"):
        model = build_model(opts["model"], opts["num_classes"], **opts["model_options"])
    cost = measure(model, torch.zeros(2, 3, h, w, device="meta"))
    row = {"run": run_dir.name, "model": opts["model"], "params": human(cost["params"]),
           "binary": human(cost["binary_params"]), "OPs": human(cost["ops"])}
    prefix = result_prefix(opts)
    for direction, short in DIRECTIONS:
        metrics = results.get(f"{prefix}/{direction}")
        row[f"{short} R@1"] = f"{metrics['recall@1']:.2f}" if metrics else "—"
        row[f"{short} AP"] = f"{metrics['ap']:.2f}" if metrics else "—"
    return row


def markdown(rows) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


@exit_on_user_error
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run names under --checkpoint_dir")
    parser.add_argument("--checkpoint_dir", default="checkpoints", help="parent folder of the runs")
    parser.add_argument("--h", type=int, default=256, help="input height at which OPs are counted")
    parser.add_argument("--w", type=int, default=256, help="input width at which OPs are counted")
    args = parser.parse_args(argv)
    rows = [run_row(Path(args.checkpoint_dir) / name, args.h, args.w) for name in args.runs]
    print(markdown(rows))
    print(f"\nOPs = BOPs/64 + FLOPs (MACs) for one 2×3×{args.h}×{args.w} inference (one satellite + one drone image).")


if __name__ == "__main__":
    main()
