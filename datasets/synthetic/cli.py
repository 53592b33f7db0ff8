"""Command line of the generator (run as ``python -m datasets.synthetic``).

It lives outside ``__main__.py`` so the package can export ``main`` without importing its own
``__main__`` module, which would make runpy warn when the package is run.
"""
import argparse
import inspect
import time

from utils.errors import exit_on_user_error

from .layouts import MANIFEST, SUES_TRAIN_SHARE, generate_sues, generate_university

# University-only flags of the per-place counts of ground-level images: parameter, folder.
STREET_FLAGS = {"streets": ("street_per_place", "train/street"), "google": ("google_per_place", "train/google"),
                "query_streets": ("query_street_per_place", "test/query_street"),
                "gallery_streets": ("gallery_street_per_place", "test/gallery_street")}


def _default(generate, parameter: str):
    """The generator's own default, so that the command line cannot drift from the library."""
    return inspect.signature(generate).parameters[parameter].default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.synthetic",
        description="Generate a small deterministic dataset with the University-1652 or SUES-200 layout.")
    parser.add_argument("--layout", choices=("university", "sues"), default="university",
                        help="folder layout to imitate (default: %(default)s)")
    parser.add_argument("--out", required=True,
                        help="dataset root to write train/ and test/ into (a folder this generator "
                             "wrote before is replaced; any other non-empty train/ or test/ is refused)")
    parser.add_argument("--train_places", type=int, default=None,
                        help=f"training places (default: {_default(generate_university, 'train_places')} "
                             f"for university, {round(100 * SUES_TRAIN_SHARE)}%% of --places for sues)")
    parser.add_argument("--test_places", type=int, default=_default(generate_university, "test_places"),
                        help="university: test places, ids from 0000 (default: %(default)s)")
    parser.add_argument("--distractor_places", type=int,
                        default=_default(generate_university, "distractor_places"),
                        help="university: extra places found only in the galleries (default: %(default)s)")
    parser.add_argument("--places", type=int, default=_default(generate_sues, "places"),
                        help="sues: all places, train and test (default: %(default)s)")
    parser.add_argument("--drones", type=int, default=_default(generate_university, "drones_per_place"),
                        help="drone images per place (per altitude for sues) (default: %(default)s)")
    for flag, (parameter, folder) in STREET_FLAGS.items():
        parser.add_argument(f"--{flag}", type=int, default=_default(generate_university, parameter),
                            help=f"university: {folder} images per place (default: %(default)s)")
    parser.add_argument("--size", type=int, default=_default(generate_university, "image_size"),
                        help="image side in pixels (default: %(default)s)")
    altitudes = _default(generate_sues, "altitudes")
    parser.add_argument("--altitudes", type=int, nargs="+", default=list(altitudes),
                        help="sues: altitude folders in metres; higher means a wider drone view "
                             f"(default: {' '.join(map(str, altitudes))})")
    parser.add_argument("--seed", type=int, default=_default(generate_university, "seed"),
                        help="random seed; equal seeds give identical files (default: %(default)s)")
    return parser


@exit_on_user_error
def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    start = time.perf_counter()
    shared = dict(drones_per_place=args.drones, image_size=args.size, seed=args.seed)
    if args.train_places is not None:
        shared["train_places"] = args.train_places
    try:
        if args.layout == "university":
            summary = generate_university(
                args.out, test_places=args.test_places, distractor_places=args.distractor_places,
                **{parameter: getattr(args, flag) for flag, (parameter, _) in STREET_FLAGS.items()}, **shared)
        else:
            summary = generate_sues(args.out, places=args.places, altitudes=args.altitudes, **shared)
    except ValueError as err:  # the generators check their parameters before writing anything
        parser.error(str(err))
    print(f"wrote {summary['layout']} dataset to {summary['root']} in {time.perf_counter() - start:.1f}s")
    for folder, count in summary["folders"].items():
        print(f"  {folder:<28} {count['classes']:5d} classes {count['images']:6d} images")
    if summary.get("google_neighbours"):
        print(f"  train/google: {len(summary['google_neighbours'])} of its images show another training "
              f"place (listed in {MANIFEST})")
    return summary
