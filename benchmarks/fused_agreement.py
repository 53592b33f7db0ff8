"""How far the fused engine's results are from the exact ones, on a trained packed student.

Three measurements (docs/engine_speed.md):

* per unit: the largest relative difference ``max |fused - exact| / max |exact|`` of each BNext
  unit's output, both units fed the exact engine's input to that unit (so only the unit's own
  rounding counts), over the images;
* per block: the fraction of the next unit's activation signs that differ between the two engines
  when each runs the whole network on its own (flips spread: these grow with depth);
* end to end: Recall@1 and AP of each ``--test_dir`` in both aerial directions with the float and
  fused engines, and their differences in queries (one query moves Recall@1, and AP by at most
  100 / queries); the bitpacked engine's are the float engine's, bit for bit (test_bitpacked.py).

Run from the repository root, e.g.
``python -m benchmarks.fused_agreement --packed RUN/last_packed.pt --test_dir DATA/test OTHER/test``.
"""
import argparse
from typing import Dict, List

import torch
from torch.utils.data import DataLoader

from datasets.retrieval import AERIAL_MODES, DRONE_QUERY_MODES, MODE_NAMES, build_test_sets
from evaluation.features import extract_features
from evaluation.metrics import evaluate_retrieval
from runs.packed import load_packed

DIRECTIONS = {mode: MODE_NAMES[mode] for mode in AERIAL_MODES}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packed", required=True, help="packed student file (export.py)")
    parser.add_argument("--test_dir", nargs="+", required=True, help="University-1652-layout test folders")
    parser.add_argument("--images", type=int, default=128, help="drone query images for the per-unit and sign figures")
    parser.add_argument("--batchsize", type=int, default=16, help="images per forward pass")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return parser.parse_args(argv)


def unit_inputs(exact, images: torch.Tensor) -> List[tuple]:
    """(unit, its input) for every unit of the exact engine's backbone, in order."""
    captured = []
    units = [u for block in exact.backbone.blocks for u in (block.attention, *block.ffn)]
    hooks = [u.register_forward_pre_hook(lambda m, args: captured.append((m, torch.cat(args[0])))) for u in units]
    with torch.inference_mode():
        exact(images)
    for hook in hooks:
        hook.remove()
    return captured


def unit_differences(exact, fused, images: torch.Tensor) -> List[float]:
    """Per unit, ``max |fused - exact| / max |exact|`` on the same input."""
    pairs = dict(zip([u for b in exact.backbone.blocks for u in (b.attention, *b.ffn)],
                     [u for b in fused.backbone.blocks for u in (b.attention, *b.ffn)]))
    out = []
    with torch.inference_mode():
        for unit, x in unit_inputs(exact, images):
            reference = torch.cat(unit([x]))
            other = pairs[unit]
            got, _ = other(x, other.ops.pack(x, other.move))
            out.append(float((got - reference).abs().max() / reference.abs().max()))
    return out


def block_outputs(model, images: torch.Tensor) -> List[torch.Tensor]:
    """Every block's output map for all ``images``, for either engine (whose blocks see the batch in
    micro-batches, in different orders)."""
    maps = {block: [] for block in model.backbone.blocks}
    hooks = [b.register_forward_hook(lambda m, args, out: maps[m].extend(out if isinstance(out, list) else out[:1]))
             for b in model.backbone.blocks]
    with torch.inference_mode():
        model(images)
    for hook in hooks:
        hook.remove()
    return [torch.cat(chunks) for chunks in maps.values()]


def sign_flips(exact, fused, images: torch.Tensor) -> List[float]:
    """Per block but the last, the fraction of the next unit's input signs that differ."""
    moves = [b.attention.move for b in exact.backbone.blocks[1:]]
    flips = []
    for e, f, move in zip(block_outputs(exact, images), block_outputs(fused, images), moves):
        flips.append(float(((e + move[:, None, None] >= 0) != (f + move[:, None, None] >= 0)).float().mean()))
    return flips


def metrics(model, test_dir: str, mode: int, h: int, w: int, batchsize: int) -> Dict[str, float]:
    query_set, gallery_set = build_test_sets(test_dir, "university", None, mode, h, w)
    qf, ql = extract_features(model, DataLoader(query_set, batch_size=batchsize), "cpu", desc="query")
    gf, gl = extract_features(model, DataLoader(gallery_set, batch_size=batchsize), "cpu", desc="gallery")
    return dict(evaluate_retrieval(qf, ql, gf, gl), queries=len(query_set))


def drone_images(test_dir: str, count: int, h: int, w: int) -> torch.Tensor:
    query_set, _ = build_test_sets(test_dir, "university", None, DRONE_QUERY_MODES[0], h, w)
    loader = DataLoader(query_set, batch_size=count)
    return next(iter(loader))[0]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    engines = {name: load_packed(args.packed, engine=name)[0] for name in ("float", "bitpacked", "fused")}
    meta = load_packed(args.packed)[1]
    h, w = meta["h"], meta["w"]
    images = drone_images(args.test_dir[0], args.images, h, w)
    print(f"{args.packed}: {len(images)} drone query images of {args.test_dir[0]} at {h}x{w}\n")
    diffs = unit_differences(engines["bitpacked"], engines["fused"], images)
    print("| unit | max relative difference, fused vs exact (same input) |\n|---:|---:|")
    for i, d in enumerate(diffs):
        print(f"| {i + 1} | {d:.2e} |")
    print(f"\nlargest over units: {max(diffs):.2e}\n")
    flips = sign_flips(engines["bitpacked"], engines["fused"], images)
    print("| block | next unit's input signs that differ |\n|---:|---:|")
    for i, f in enumerate(flips):
        print(f"| {i + 1} | {100 * f:.4f}% |")
    print("\n| test folder | direction | engine | Recall@1 | AP | Recall@1 vs float (queries) | "
          "AP vs float (one query = 100 / queries) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for test_dir in args.test_dir:
        for mode, direction in DIRECTIONS.items():
            results = {name: metrics(engines[name], test_dir, mode, h, w, args.batchsize)
                       for name in ("float", "fused")}
            for name, m in results.items():
                queries = (m["recall@1"] - results["float"]["recall@1"]) * m["queries"] / 100
                ap_queries = (m["ap"] - results["float"]["ap"]) * m["queries"] / 100
                print(f"| {test_dir} | {direction} | {name} | {m['recall@1']:.2f} | {m['ap']:.2f} | "
                      f"{queries:+.0f} | {ap_queries:+.3f} queries |")


if __name__ == "__main__":
    main()
