#!/usr/bin/env python
"""Side-by-side table of evaluated runs: retrieval metrics from each run's ``results.json`` (the newest
evaluation at the run's own training size unless ``--eval_size`` says otherwise, with the size,
checkpoint and precision shown) and the cost of one inference (parameters, OPs) counted at the
paper's 2×3×256×256.

    python scripts/compare_runs.py --checkpoint_dir checkpoints teacher_university bicrossnet_university
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.records import RESULTS_FILE, latest_record, load_results  # noqa: E402
from models import build_model  # noqa: E402
from models.complexity import human, measure  # noqa: E402
from runs.checkpoints import load_opts  # noqa: E402
from utils.errors import UserError, exit_on_user_error  # noqa: E402

DIRECTIONS = (("Drone->Satellite", "D→S"), ("Satellite->Drone", "S→D"))


def run_row(run_dir: Path, h: int, w: int, eval_size: Optional[Tuple[int, int]]) -> dict:
    """One table row: the run's newest results at its own training size (or ``eval_size``)."""
    opts = load_opts(run_dir)
    results_path = run_dir / RESULTS_FILE
    if not results_path.is_file():
        raise UserError(f"{results_path} does not exist; evaluate the run with test.py first")
    results = load_results(results_path)
    with torch.device("meta"):
        model = build_model(opts["model"], opts["num_classes"], **opts["model_options"])
    cost = measure(model, torch.zeros(2, 3, h, w, device="meta"))
    size_h, size_w = eval_size or (opts["h"], opts["w"])
    row = {"run": run_dir.name, "model": opts["model"], "params": human(cost["params"]),
           "binary": human(cost["binary_params"]), "OPs": human(cost["ops"]), "eval size": f"{size_h}x{size_w}"}
    records = {short: latest_record(results, opts.get("dataset", "university"), direction, opts.get("altitude"),
                                    h=size_h, w=size_w) for direction, short in DIRECTIONS}
    shown = next((r for r in records.values() if r), {})
    row["checkpoint"] = shown.get("checkpoint", "—")
    row["precision"] = shown.get("precision", "—")
    for short, metrics in records.items():
        row[f"{short} R@1"] = metric_text(metrics, "recall@1", results_path)
        row[f"{short} AP"] = metric_text(metrics, "ap", results_path)
    return row


def metric_text(record: Optional[dict], key: str, results_path: Path) -> str:
    """A record's metric to two decimals ('—' without a record); anything but a number is refused."""
    if not record:
        return "—"
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{results_path}: a record's {key!r} is {value!r}, expected a number; fix or delete the record")
    return f"{value:.2f}"


def parse_size(text: str) -> Tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 256x256, got {text!r}") from None
    return h, w


def markdown(rows) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


@exit_on_user_error
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run names under --checkpoint_dir")
    parser.add_argument("--checkpoint_dir", default="checkpoints", help="parent folder of the runs")
    parser.add_argument("--h", type=int, default=256, help="input height at which OPs are counted")
    parser.add_argument("--w", type=int, default=256, help="input width at which OPs are counted")
    parser.add_argument("--eval_size", type=parse_size, default=None, metavar="HxW",
                        help="show results evaluated at this input size (default: each run's training size)")
    args = parser.parse_args(argv)
    rows = [run_row(Path(args.checkpoint_dir) / name, args.h, args.w, args.eval_size) for name in args.runs]
    print(markdown(rows))
    print(f"\nOPs = BOPs/64 + FLOPs (MACs) for one 2×3×{args.h}×{args.w} inference (one satellite + one drone image).")


if __name__ == "__main__":
    main()
