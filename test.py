"""Evaluate a trained run on the University-1652 or SUES-200 test split (docs/method.md §4).

    python test.py --name RUN --test_dir data/University-1652/test [--mode both]
    python test.py --name RUN --test_dir data/University-1652/test --mode all --multi
    python test.py --name RUN --test_dir data/University-1652/test --mode 3 --ms 1,1.125
    python test.py --name RUN --test_dir data/SUES-200/test --altitude all
    python test.py --packed checkpoints/RUN/last_packed.pt --engine bitpacked --test_dir data/University-1652/test

The network is rebuilt from ``<checkpoint_dir>/<name>/opts.yaml`` and its checkpoint, or from a
1-bit packed file written by ``export.py`` (``--packed``, results then go beside that file); the
dataset kind, altitude and input size default to the run's own. Per direction it prints the
familiar ``Recall@1:.. Recall@5:.. Recall@10:.. Recall@top1:.. AP:..`` line and records the
metrics in ``<run>/results.json`` under a key naming everything that changes them
(``university/Drone->Satellite/last.pth/256x256/flip/float/cpu-fp32``), next to earlier evaluations.

Directions (``--mode``): 1 Satellite->Drone, 2 Drone->Satellite, and on University-1652 the street
view's 3 Street->Satellite, 4 Satellite->Street, 5 Drone->Street, 6 Street->Drone; ``both`` is 1
and 2, ``all`` every direction whose query and gallery folders the test split holds (a note names
the street directions it skips; on SUES-200, which has no street view, 1 and 2).

``--ms 1,1.1`` is MCCG's multi-scale test with MCCG's meaning: each value s is an area ratio, so
the network also sees each batch resized (bilinear) by sqrt(s) in height and width, and the branch
features of all scales (and mirrors) are summed before normalization. The key then carries
``ms1,1.1`` after the size. ``--multi`` adds
University-1652's multiple-query result to each direction with drone queries (2 and 5): the
descriptors of one place's drone queries are averaged and renormalized into one query, one per
place, ranked against the same gallery; its key carries ``multi-query`` after the direction.
``--multi`` with a direction without drone queries (1, 3, 4, 6) is refused.

``--export_mat`` writes the (single-query) features in the University-1652 ``pytorch_result.mat``
format (query_f, query_label, query_path, gallery_f, gallery_label, gallery_path); when one call
evaluates several directions or altitudes, each file is named ``pytorch_result_<tag>.mat`` with tags
such as ``drone_to_satellite``, ``street_to_satellite`` or ``150m_satellite_to_drone``.
``--visualize K`` saves ``retrieval_<tag>.png``: K queries and their top-10 gallery images, matches
framed green and mistakes red.
"""
import argparse
import math
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from torch.utils.data import DataLoader

from datasets import (AERIAL_MODES, BAD_IMAGE_MODES, DATASET_MODES, DRONE_QUERY_MODES, MODE_NAMES, MODES,
                      SUES_ALTITUDES, build_test_sets, modes_in_split)
from evaluation.features import check_scales, extract_features, pool_queries, scaled_size
from evaluation.matfile import export_mat
from evaluation.metrics import count_unmatched, evaluate_retrieval, format_metrics
from evaluation.records import RESULTS_FILE, load_results, record_result, scales_label
from evaluation.visualize import save_retrieval_grid
from models._helpers import check_input_size
from models.packing import ENGINES, load_packed
from models.run import checkpoint_name, load_opts, load_trained_model
from utils.device import DEVICE_CHOICES, configure_precision, device_label, resolve_device
from utils.errors import UserError, exit_on_user_error

DATASET_TITLES = {"university": "University-1652", "sues": "SUES-200"}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every flag's default in its help, and the module docstring's examples as written."""


def mode_help() -> str:
    """``--mode``'s help, written from the library's table of directions."""
    listing = ", ".join(f"{mode} = {name}" for mode, name in MODE_NAMES.items())
    return (f"{listing}, both = {' then '.join(map(str, AERIAL_MODES))}, all = every direction the test split "
            f"holds (SUES-200: {' and '.join(map(str, DATASET_MODES['sues']))})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--name", default=None, help="run name; the run directory is <checkpoint_dir>/<name>/")
    p.add_argument("--packed", default=None, metavar="FILE",
                   help="evaluate a packed 1-bit model file from export.py instead of a run's checkpoint")
    p.add_argument("--engine", default="float", choices=ENGINES,
                   help="--packed only: float (the training network), bitpacked (XNOR/popcount CPU kernels, "
                        "same results) or fused (also the full-precision tail in C++: faster, may round differently)")
    p.add_argument("--checkpoint_dir", default="checkpoints", help="parent folder of run directories")
    p.add_argument("--test_dir", required=True,
                   help="test folder: University-1652/test, or SUES-200/test (holding one folder per altitude)")
    p.add_argument("--which_epoch", default="last",
                   help="checkpoint to evaluate: 'last' (last.pth) or an epoch number N (net_NNN.pth)")
    p.add_argument("--mode", default="both", choices=[*map(str, MODES), "both", "all"],
                   help=mode_help())
    p.add_argument("--ms", default="1", metavar="S[,S...]",
                   help="multi-scale test, as MCCG's: comma-separated area ratios (e.g. 1,1.1); each resizes the "
                        "input by sqrt(S) in height and width, and the features at every scale are summed")
    p.add_argument("--multi", action="store_true",
                   help="also evaluate multiple queries: one query per place, the renormalized mean of its drone "
                        f"queries' descriptors, in the directions with drone queries "
                        f"({' and '.join(map(str, DRONE_QUERY_MODES))}); refused for the others")
    p.add_argument("--altitude", default=None, choices=[*map(str, SUES_ALTITUDES), "all"],
                   help="SUES-200 altitude (default: the run's training altitude); 'all' evaluates all four")
    p.add_argument("--h", type=int, default=None, help="input height (default: the run's)")
    p.add_argument("--w", type=int, default=None, help="input width (default: the run's)")
    p.add_argument("--batchsize", type=int, default=64, help="images per forward pass")
    p.add_argument("--num_workers", type=int, default=4, help="data-loading processes")
    p.add_argument("--on_bad_image", default="error", choices=BAD_IMAGE_MODES,
                   help="unreadable test image: stop with its name, or leave it out of the evaluation")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="auto picks CUDA when present")
    p.add_argument("--amp", action="store_true",
                   help="float16 autocast for feature extraction on CUDA (default: full float32)")
    p.add_argument("--tf32", action="store_true",
                   help="let CUDA float32 convolutions and matrix products use TF32 (default: IEEE float32)")
    p.add_argument("--no_flip", action="store_true", help="skip the horizontal-flip test-time augmentation")
    p.add_argument("--export_mat", action="store_true", help="also write the features as pytorch_result*.mat")
    p.add_argument("--visualize", type=int, default=0, metavar="K",
                   help="save a PNG of K queries with their top-10 gallery images (0: none)")
    return p


def evaluation_plan(args, opts: dict):
    """(dataset, [altitudes], [modes]); altitude None for University-1652."""
    dataset = opts.get("dataset", "university")
    if dataset == "sues":
        altitude = args.altitude or opts.get("altitude")
        if altitude is None:
            raise UserError("--altitude is needed: the run's options record no SUES-200 altitude (150, 200, 250, "
                            "300 or all)")
        altitudes = list(SUES_ALTITUDES) if altitude == "all" else [int(altitude)]
    elif args.altitude is not None:
        raise UserError(f"--altitude applies to SUES-200 runs only; {args.name or args.packed!r} was trained on {dataset!r}")
    else:
        altitudes = [None]
    return dataset, altitudes, plan_modes(args, dataset, altitudes[0])


def plan_modes(args, dataset: str, altitude) -> list:
    """The directions ``--mode`` asks for; ``all`` skips (with a note) street directions the split lacks."""
    if args.mode == "all":
        modes, skipped = modes_in_split(args.test_dir, dataset, altitude)
        if skipped:
            missing = sorted({name for names in skipped.values() for name in names})
            print(f"note: {args.test_dir} has no {' or '.join(missing)}; --mode all skips "
                  f"{', '.join(MODE_NAMES[m] for m in skipped)}")
    else:
        modes = list(AERIAL_MODES) if args.mode == "both" else [int(args.mode)]
    if any(mode not in DATASET_MODES[dataset] for mode in modes):
        raise UserError(f"--mode {args.mode} ({MODE_NAMES[modes[0]]}): SUES-200 has no street view; use --mode "
                        + ", ".join(map(str, DATASET_MODES[dataset])) + ", both or all")
    if args.multi and not any(mode in DRONE_QUERY_MODES for mode in modes):
        raise UserError(f"--multi pools the drone queries of each place, and --mode {args.mode} "
                        f"({MODE_NAMES[modes[0]]}) has none: use --mode "
                        + ", ".join(map(str, DRONE_QUERY_MODES)) + ", both or all")
    return modes


def file_tag(altitude, mode: int) -> str:
    direction = MODE_NAMES[mode].lower().replace("->", "_to_")
    return direction if altitude is None else f"{altitude}m_{direction}"


def extract(model, images, args, device, desc: str):
    """Unit-norm descriptors of a query or gallery set, in the set's order."""
    loader = DataLoader(images, batch_size=args.batchsize, shuffle=False, num_workers=args.num_workers,
                        pin_memory=device.type == "cuda")
    return extract_features(model, loader, device, amp=args.amp, flip=not args.no_flip, desc=desc,
                            scales=args.sides)[0]


def print_table(dataset: str, rows: dict) -> None:
    """Recall@1 and AP of every ``(altitude, column)`` evaluated (a column is a direction, or its
    multi-query result): for SUES-200 a line per altitude, for University-1652 a line per column."""
    columns = list(dict.fromkeys(column for _, column in rows))
    cell = {key: f"{m['recall@1']:7.2f} / {m['ap']:6.2f}" for key, m in rows.items()}
    print(f"{DATASET_TITLES[dataset]} summary (Recall@1 / AP)")
    if dataset != "sues":
        width = max(map(len, columns))
        for column in columns:
            print(f"{column:<{width}}  {cell[None, column]}")
        return
    widths = [max(17, len(column)) for column in columns]
    print("altitude  " + "  ".join(f"{c:>{w}}" for c, w in zip(columns, widths)))
    for altitude in sorted({a for a, _ in rows}):
        cells = (f"{cell.get((altitude, column), '—'):>{width}}" for column, width in zip(columns, widths))
        print(f"{altitude:>6} m  " + "  ".join(cells))


def parse_scales(text: str) -> tuple:
    """``--ms 1,1.1`` -> (1.0, 1.1): distinct finite positive numbers (MCCG's area ratios)."""
    try:
        return check_scales(float(value) for value in text.split(","))
    except ValueError:
        raise UserError(f"--ms {text!r}: expected distinct positive numbers separated by commas, such as 1,1.1") \
            from None


def side_factors(area_ratios: tuple) -> tuple:
    """The resize factor on height and width of each ``--ms`` area ratio, as MCCG's test.py takes it."""
    return tuple(math.sqrt(ratio) for ratio in area_ratios)


def check_flags(args) -> None:
    if args.batchsize < 1 or args.num_workers < 0 or args.visualize < 0:
        raise UserError("--batchsize must be >= 1, --num_workers and --visualize >= 0")
    for flag in ("h", "w"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    if (args.name is None) == (args.packed is None):
        raise UserError("pass exactly one of --name RUN (a training run) or --packed FILE (an export.py file)")
    if args.engine != "float" and not args.packed:
        raise UserError(f"--engine {args.engine} runs packed files: pass --packed FILE (write one with export.py)")
    args.scales = parse_scales(args.ms)
    args.sides = side_factors(args.scales)


def check_sizes(model, h: int, w: int, scales: tuple, sides: tuple, model_name: str) -> None:
    """The network must take the input size and every scaled size (``--ms`` area ratios ``scales``,
    their side factors ``sides``): one line naming the flag if not."""
    for scale, side in ((1.0, 1.0), *((s, f) for s, f in zip(scales, sides) if s != 1)):
        size = scaled_size(h, w, side)
        try:
            if min(size) < 1:
                raise ValueError(f"{size[0]}x{size[1]} is no image size")
            check_input_size(model, *size, model_name)
        except ValueError as err:
            where = f"--h {h} --w {w}" if scale == 1 else \
                f"--ms {scale:g} (the {h}x{w} input resized to {size[0]}x{size[1]})"
            raise UserError(f"{where}: {err}") from None


def check_writable(folder: Path) -> None:
    """Results are saved beside the run: a folder that cannot take them fails before the long work."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{folder} is not writable, so {RESULTS_FILE} could not be saved there; "
                        f"fix its permissions or evaluate a copy of the run")


def score(qf, query_labels, gf, gallery_labels, device, queries: str = "queries") -> dict:
    """Metrics of query descriptors against gallery descriptors, with the count of unmatched queries."""
    metrics = evaluate_retrieval(qf.to(device), query_labels, gf.to(device), gallery_labels)
    unmatched = count_unmatched(query_labels, gallery_labels)
    if unmatched:
        print(f"note: {unmatched} of {len(query_labels)} {queries} have no match in the gallery; "
              f"they score 0 by protocol")
    return dict(metrics, unmatched_queries=unmatched)


def evaluate_direction(model, sets, args, device) -> tuple:
    """Descriptors and metrics of one (query, gallery) pair of sets; prints the unmatched queries."""
    query_set, gallery_set = sets
    qf = extract(model, query_set, args, device, "query")
    gf = extract(model, gallery_set, args, device, "gallery")
    return qf, gf, score(qf, query_set.labels, gf, gallery_set.labels, device)


@exit_on_user_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_flags(args)
    source = EvaluationSource(args)
    dataset, altitudes, modes = evaluation_plan(args, source.opts)
    device = resolve_device(args.device)
    precision = configure_precision(device, args.amp, args.tf32)
    h, w = args.h or source.opts["h"], args.w or source.opts["w"]
    if (h, w) != (source.opts["h"], source.opts["w"]):
        print(f"note: evaluating at {h}x{w}; the network was trained at {source.opts['h']}x{source.opts['w']}")
    # Test folders, earlier results and the run folder are checked before the (slow) model load.
    test_sets = {(altitude, mode): build_test_sets(args.test_dir, dataset, altitude, mode, h, w, args.on_bad_image)
                 for altitude in altitudes for mode in modes}
    results_path = source.run_dir / RESULTS_FILE
    load_results(results_path)
    check_writable(source.run_dir)
    model = source.load().to(device)
    check_sizes(model, h, w, args.scales, args.sides, source.opts["model"])
    common = dict(dataset=dataset, checkpoint=source.name, epoch=source.epoch, h=h, w=w, flip=not args.no_flip,
                  scales=list(args.scales), query="single", engine=source.engine, device=device_label(device),
                  precision=precision, test_dir=str(Path(args.test_dir).resolve()))
    try:
        table = evaluate_plan(model, test_sets, args, device, results_path, common)
    except KeyboardInterrupt:
        print(f"error: interrupted; the directions finished before are saved in {results_path}", file=sys.stderr)
        return 130
    if len(altitudes) > 1 or len(table) > 2:
        print_table(dataset, table)
    return 0


class EvaluationSource:
    """What is evaluated: a run's checkpoint (``--name``/``--which_epoch``) or a packed file
    (``--packed``, with ``--engine``); results go beside it."""

    def __init__(self, args):
        self.args = args
        if args.packed:
            self.model, self.opts = load_packed(args.packed, engine=args.engine)
            self.run_dir, self.name, self.epoch = Path(args.packed).parent, Path(args.packed).name, self.opts.get("epoch")
            self.engine = f"packed-{args.engine}"
        else:
            self.run_dir = Path(args.checkpoint_dir) / args.name
            self.opts, self.model = load_opts(self.run_dir), None
            self.name, self.engine = checkpoint_name(args.which_epoch), "float"

    def load(self):
        """The network (a run's checkpoint is read only now, after the cheap checks)."""
        if self.model is None:
            self.model, _, checkpoint = load_trained_model(self.run_dir, self.args.which_epoch, opts=self.opts)
            self.epoch = checkpoint.get("epoch")
        return self.model


def evaluate_plan(model, test_sets: dict, args, device, results_path: Path, common: dict) -> dict:
    """Evaluate every (altitude, direction), recording each as soon as it is done; returns the
    metrics by (altitude, table column)."""
    table = {}
    scales = "" if args.scales == (1.0,) else f", scales {scales_label(args.scales)}"
    for (altitude, mode), sets in test_sets.items():
        where = f" {altitude} m" if altitude is not None else ""
        print(f"{DATASET_TITLES[common['dataset']]}{where} {MODE_NAMES[mode]}: {len(sets[0])} queries, "
              f"{len(sets[1])} gallery images ({results_path.parent.name}/{common['checkpoint']}, "
              f"{common['device']}, {common['precision']}{scales})")
        qf, gf, metrics = evaluate_direction(model, sets, args, device)
        record = dict(common, altitude=altitude, direction=MODE_NAMES[mode], num_gallery=len(sets[1]))
        table[altitude, MODE_NAMES[mode]] = save_result(results_path, record, metrics, num_queries=len(sets[0]))
        save_extras(args, results_path.parent, file_tag(altitude, mode), len(test_sets) > 1, sets, qf, gf)
        if args.multi and mode in DRONE_QUERY_MODES:
            pooled, places = pool_queries(qf, sets[0].labels)
            print(f"{MODE_NAMES[mode]} multi-query: {len(places)} places, each one query pooled from its "
                  f"drone images")
            metrics = score(pooled, places, gf, sets[1].labels, device, "places")
            table[altitude, f"{MODE_NAMES[mode]} multi-query"] = save_result(
                results_path, dict(record, query="multi"), metrics, num_queries=len(places),
                num_query_images=len(sets[0]))
    return table


def save_result(results_path: Path, record: dict, metrics: dict, **counts) -> dict:
    """Print the familiar metrics line and record it in ``results.json``; returns ``metrics``."""
    print(format_metrics(metrics))
    record_result(results_path, dict(record, **metrics, **counts,
                                     time=datetime.now(timezone.utc).isoformat(timespec="seconds")))
    return metrics


def save_extras(args, run_dir: Path, tag: str, several: bool, sets, qf, gf) -> None:
    """The optional ``.mat`` features and retrieval picture of one direction."""
    query_set, gallery_set = sets
    if args.export_mat:
        export_mat(run_dir / (f"pytorch_result_{tag}.mat" if several else "pytorch_result.mat"),
                   query_set, qf, gallery_set, gf)
    if args.visualize:
        save_retrieval_grid(run_dir / f"retrieval_{tag}.png", query_set.paths, query_set.labels, qf,
                            gallery_set.paths, gallery_set.labels, gf, num_queries=args.visualize)


if __name__ == "__main__":
    raise SystemExit(main())
