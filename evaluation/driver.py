"""The evaluation that ``test.py`` runs once its flags are checked: what is evaluated (a run's
checkpoint or a packed file), which directions and altitudes, the descriptors and metrics of each
direction, and the records, ``.mat`` files and pictures saved beside the run.

Everything cheap is checked before the slow model load: the test folders, earlier results and
whether the run folder takes new ones. Each direction is recorded as soon as it is done, so an
interrupted evaluation keeps the directions it finished.
"""
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from datasets import AERIAL_MODES, DATASET_MODES, DRONE_QUERY_MODES, MODE_NAMES, SUES_ALTITUDES, build_test_sets, \
    modes_in_split
from models._helpers import check_input_size
from runs.checkpoints import load_opts, load_trained_model
from runs.layout import checkpoint_name, run_folder
from runs.packed import load_packed
from utils.device import configure_precision, device_label, resolve_device
from utils.errors import UserError

from .binary_codes import binarize, evaluate_descriptors
from .features import extract_features, pool_queries, scaled_size
from .matfile import export_mat
from .metrics import count_unmatched, format_metrics
from .records import RESULTS_FILE, load_results, record_result, scales_label
from .visualize import save_retrieval_grid

DATASET_TITLES = {"university": "University-1652", "sues": "SUES-200"}


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
            self.run_dir = run_folder(args.checkpoint_dir, args.name)
            self.opts, self.model = load_opts(self.run_dir), None
            self.name, self.engine = checkpoint_name(args.which_epoch), "float"

    def load(self):
        """The network (a run's checkpoint is read only now, after the cheap checks)."""
        if self.model is None:
            self.model, _, checkpoint = load_trained_model(self.run_dir, self.args.which_epoch, opts=self.opts)
            self.epoch = checkpoint.get("epoch")
        return self.model


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


def run(args) -> int:
    """Evaluate what ``args`` (test.py's checked flags) name, direction by direction; the exit code."""
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
                  precision=precision, descriptor=args.descriptor, test_dir=str(Path(args.test_dir).resolve()))
    try:
        table = evaluate_plan(model, test_sets, args, device, results_path, common)
    except KeyboardInterrupt:
        print(f"error: interrupted; the directions finished before are saved in {results_path}", file=sys.stderr)
        return 130
    if len(altitudes) > 1 or len(table) > 2:
        print_table(dataset, table)
    return 0


def extract(model, images, args, device, desc: str):
    """Unit-norm descriptors of a query or gallery set, in the set's order. Non-finite descriptors
    (a diverged network) stop the evaluation before anything is scored or recorded."""
    loader = DataLoader(images, batch_size=args.batchsize, shuffle=False, num_workers=args.num_workers,
                        pin_memory=device.type == "cuda")
    features = extract_features(model, loader, device, amp=args.amp, flip=not args.no_flip, desc=desc,
                                scales=args.sides)[0]
    nonfinite = int((~torch.isfinite(features)).any(dim=1).sum())
    if nonfinite:
        evaluated = args.packed or run_folder(args.checkpoint_dir, args.name) / checkpoint_name(args.which_epoch)
        raise UserError(f"{evaluated} gives non-finite {desc} features for {nonfinite} of {len(features)} images (its "
                        f"weights or statistics hold NaN or infinity, as after a diverged run); nothing recorded")
    return features


def score(qf, query_labels, gf, gallery_labels, device, descriptor: str, queries: str = "queries") -> dict:
    """Metrics of query descriptors against gallery descriptors, ranked by dot product (float) or by
    the Hamming distance of their sign codes (binary), with the count of unmatched queries."""
    metrics = evaluate_descriptors(qf, query_labels, gf, gallery_labels, descriptor, device)
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
    return qf, gf, score(qf, query_set.labels, gf, gallery_set.labels, device, args.descriptor)


def evaluate_plan(model, test_sets: dict, args, device, results_path: Path, common: dict) -> dict:
    """Evaluate every (altitude, direction), recording each as soon as it is done; returns the
    metrics by (altitude, table column)."""
    table = {}
    notes = "" if args.scales == (1.0,) else f", scales {scales_label(args.scales)}"
    notes += ", binary descriptors" if args.descriptor == "binary" else ""
    for (altitude, mode), sets in test_sets.items():
        where = f" {altitude} m" if altitude is not None else ""
        print(f"{DATASET_TITLES[common['dataset']]}{where} {MODE_NAMES[mode]}: {len(sets[0])} queries, "
              f"{len(sets[1])} gallery images ({results_path.parent.name}/{common['checkpoint']}, "
              f"{common['device']}, {common['precision']}{notes})")
        qf, gf, metrics = evaluate_direction(model, sets, args, device)
        record = dict(common, altitude=altitude, direction=MODE_NAMES[mode], num_gallery=len(sets[1]))
        table[altitude, MODE_NAMES[mode]] = save_result(results_path, record, metrics, num_queries=len(sets[0]))
        save_extras(args, results_path.parent, file_tag(altitude, mode), len(test_sets) > 1, sets, qf, gf)
        if args.multi and mode in DRONE_QUERY_MODES:
            pooled, places = pool_queries(qf, sets[0].labels)
            print(f"{MODE_NAMES[mode]} multi-query: {len(places)} places, each one query pooled from its "
                  f"drone images")
            metrics = score(pooled, places, gf, sets[1].labels, device, args.descriptor, "places")
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
        if args.descriptor == "binary":  # +-1 vectors: the dot product ranks as the Hamming distance
            qf, gf = binarize(qf), binarize(gf)
        save_retrieval_grid(run_dir / f"retrieval_{tag}.png", query_set.paths, query_set.labels, qf,
                            gallery_set.paths, gallery_set.labels, gf, num_queries=args.visualize)


def file_tag(altitude, mode: int) -> str:
    direction = MODE_NAMES[mode].lower().replace("->", "_to_")
    return direction if altitude is None else f"{altitude}m_{direction}"


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
