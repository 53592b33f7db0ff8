"""Time the vectorized retrieval metrics against the per-query reference at University-1652 scale.

Drone->Satellite: 37,855 queries x 951 gallery items; Satellite->Drone: 701 x 51,355; 1536-d.
Features are class centres plus noise, rounded to small integers times 2^-5: every float32 dot
product is then exact in any summation order, so the matrix multiply of the vectorized code and
the matrix-vector products of the loop give bitwise equal scores (including real ties) and the
two metric sets must agree to rounding of the final sums.

Both timings include computing the scores, which are the same number of multiply-adds for the two
implementations; the "scores alone" figures show how much of each time that floor takes.

Run from the repository root: ``python -m benchmarks.metrics_speed [--fraction 0.1]``.
"""
import argparse
import os
import time

import numpy as np
import torch

from evaluation.metrics import METRIC_NAMES, evaluate_retrieval, evaluate_retrieval_loop, format_metrics

TRAIN_CLASSES, DISTRACTORS, DRONE_PER_CLASS = 701, 250, 54


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fraction", type=float, default=1.0,
                        help="scale the number of classes (so of queries and gallery items); 0.1 for a quick run")
    parser.add_argument("--dim", type=int, default=1536, help="feature dimension")
    parser.add_argument("--loop-queries", type=int, default=0,
                        help="time the loop on this many random queries and extrapolate per query (0: all queries)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the vectorized version; the best is reported")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthetic features")
    return parser.parse_args(argv)


def synthetic_views(fraction, dim, rng):
    """(drone features, drone labels, satellite features, satellite labels) of the test split."""
    classes = max(1, round(TRAIN_CLASSES * fraction))
    distractors = round(DISTRACTORS * fraction)
    centres = rng.normal(0, 3, size=(classes + distractors, dim))

    def quantized(labels):
        noisy = centres[labels] + rng.normal(0, 10, size=(len(labels), dim))
        return (np.clip(np.rint(noisy), -31, 31) / 32).astype(np.float32)

    # One extra drone image in class 0, as in the real 37,855 = 701 x 54 + 1.
    drone_labels = np.concatenate([np.repeat(np.arange(classes), DRONE_PER_CLASS), [0]])
    satellite_labels = np.arange(classes + distractors)
    gallery_drone_labels = np.concatenate([np.repeat(satellite_labels, DRONE_PER_CLASS), [0]])
    return (quantized(drone_labels), drone_labels, quantized(satellite_labels), satellite_labels,
            quantized(gallery_drone_labels), gallery_drone_labels)


def best_time(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def compare(name, query_f, query_l, gallery_f, gallery_l, args, rng):
    num_queries = len(query_l)
    print(f"{name}: {num_queries} queries x {len(gallery_l)} gallery items, dim {query_f.shape[1]}")
    query_t, gallery_t = torch.from_numpy(query_f), torch.from_numpy(gallery_f)
    fast_s, fast = best_time(lambda: evaluate_retrieval(query_t, query_l, gallery_t, gallery_l), args.repeat)
    fast_scores_s, _ = best_time(lambda: [query_t[i:i + 4096] @ gallery_t.T for i in range(0, num_queries, 4096)],
                                 args.repeat)

    sample = np.arange(num_queries)
    if 0 < args.loop_queries < num_queries:
        sample = np.sort(rng.choice(num_queries, args.loop_queries, replace=False))
    start = time.perf_counter()
    reference = evaluate_retrieval_loop(query_f[sample], query_l[sample], gallery_f, gallery_l)
    loop_s = (time.perf_counter() - start) * num_queries / len(sample)
    start = time.perf_counter()
    for i in sample:
        gallery_f @ query_f[i]
    loop_scores_s = (time.perf_counter() - start) * num_queries / len(sample)

    checked = fast if len(sample) == num_queries else evaluate_retrieval(
        query_t[sample], query_l[sample], gallery_t, gallery_l)
    difference = max(abs(checked[k] - reference[k]) for k in METRIC_NAMES)
    assert difference < 1e-9, f"vectorized and loop metrics differ by {difference}"

    loop_note = "all queries" if len(sample) == num_queries else \
        f"extrapolated from {len(sample)} random queries"
    print(f"  vectorized {fast_s:8.2f} s  (best of {args.repeat}; scores alone {fast_scores_s:.2f} s)")
    print(f"  loop       {loop_s:8.2f} s  ({loop_note}; scores alone {loop_scores_s:.2f} s)")
    print(f"  speed-up   {loop_s / fast_s:8.1f}x")
    print(f"  metrics    {format_metrics(fast)}")
    print(f"  agreement  max |vectorized - loop| = {difference:.1e} on {len(sample)} queries")


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    drone_f, drone_l, sat_f, sat_l, gallery_drone_f, gallery_drone_l = synthetic_views(args.fraction, args.dim, rng)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    compare("Drone->Satellite", drone_f, drone_l, sat_f, sat_l, args, rng)
    classes = max(1, round(TRAIN_CLASSES * args.fraction))
    compare("Satellite->Drone", sat_f[:classes], sat_l[:classes], gallery_drone_f, gallery_drone_l, args, rng)


if __name__ == "__main__":
    main()
