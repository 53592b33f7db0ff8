"""Evaluate a trained run, or a packed 1-bit file, on the University-1652 or SUES-200 test split
with the Recall@K / AP protocol; each direction is printed and recorded in <run>/results.json.
docs/evaluation.md explains directions, --ms, --multi, the results keys and the .mat files.

    python test.py --name RUN --test_dir data/University-1652/test [--mode both]
    python test.py --name RUN --test_dir data/University-1652/test --mode all --multi
    python test.py --name RUN --test_dir data/SUES-200/test --altitude all
    python test.py --name RUN --test_dir data/University-1652/test --descriptor binary
    python test.py --packed checkpoints/RUN/last_packed.pt --engine bitpacked --test_dir data/University-1652/test
"""
import argparse
import math

from datasets import AERIAL_MODES, BAD_IMAGE_MODES, DATASET_MODES, DRONE_QUERY_MODES, MODE_NAMES, MODES, SUES_ALTITUDES
from evaluation.binary_codes import DESCRIPTORS
from evaluation.driver import run
from evaluation.features import check_scales
from runs.packed import ENGINES
from utils.cli import HelpFormatter, add_checkpoint_dir, add_device_flags
from utils.errors import UserError, exit_on_user_error


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
    add_checkpoint_dir(p)
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
    add_device_flags(p)
    p.add_argument("--amp", action="store_true",
                   help="float16 autocast for feature extraction on CUDA (default: full float32)")
    p.add_argument("--no_flip", action="store_true", help="skip the horizontal-flip test-time augmentation")
    p.add_argument("--descriptor", default="float", choices=DESCRIPTORS,
                   help="float: the protocol's dot product of float descriptors; binary: the sign of each dimension "
                        "packed to bits (192 bytes for 1,536 dims), ranked by Hamming distance, ties in gallery "
                        "order; recorded under its own results key")
    p.add_argument("--export_mat", action="store_true", help="also write the features as pytorch_result*.mat")
    p.add_argument("--visualize", type=int, default=0, metavar="K",
                   help="save a PNG of K queries with their top-10 gallery images (0: none)")
    return p


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


@exit_on_user_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_flags(args)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
