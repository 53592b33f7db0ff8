"""Time the retrieval metrics against their floor and against the per-query reference.

University-1652 scale: Drone->Satellite 37,855 queries x 951 gallery items, Satellite->Drone
701 x 51,355, 1536-d. Three timings per direction, all including the scores:

* floor: the bare query x gallery similarity matrix product in one shot, which any ranking method
  has to pay (computing it in chunks of queries would make the floor slower, and the ratio look
  better than the bare product allows);
* vectorized: :func:`evaluation.metrics.evaluate_retrieval` (scores, ranks of the good items, metrics);
* loop: :func:`evaluation.metrics.evaluate_retrieval_loop`, the official per-query evaluation.

Floor and vectorized runs alternate, ``--repeat`` times each, and the best of each is reported, so
that load from other processes hits both alike; their ratio is the figure of merit (at most 1.5x).

Features are class centres plus noise, rounded to small integers times 2^-5: every float32 dot
product is then exact in any summation order, so the matrix multiply of the vectorized code and the
matrix-vector products of the loop give bitwise equal scores (including real ties), and the two
metric sets must be identical, which is checked (on all queries, or on ``--loop-queries`` of them).

Run from the repository root: ``python -m benchmarks.metrics_speed [--scale 0.1] [--threads 1]``.
"""
import argparse
import os
import platform
import time

import numpy as np
import torch

from evaluation.metrics import evaluate_retrieval, evaluate_retrieval_loop, format_metrics

TRAIN_CLASSES, DISTRACTORS, DRONE_PER_CLASS = 701, 250, 54


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", "--fraction", dest="scale", type=float, default=1.0,
                        help="scale the number of classes (so of queries and gallery items); 0.1 for a quick run")
    parser.add_argument("--dim", type=int, default=1536, help="feature dimension")
    parser.add_argument("--loop-queries", type=int, default=0,
                        help="time the loop on this many random queries and extrapolate per query (0: all queries)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="alternating runs of the floor and the vectorized version; the best of each is reported")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthetic features")
    return parser.parse_args(argv)


def synthetic_views(scale, dim, rng):
    """(drone features, drone labels, satellite features, satellite labels, drone gallery features,
    drone gallery labels) of the test split."""
    classes = max(1, round(TRAIN_CLASSES * scale))
    distractors = round(DISTRACTORS * scale)
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


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def floor_and_fast(query_t, query_l, gallery_t, gallery_l, repeat):
    """Best floor time, best vectorized time, the paired ratios and the vectorized metrics."""
    def floor():
        return query_t @ gallery_t.T

    floors, fasts = [], []
    for _ in range(repeat):
        floors.append(timed(floor)[0])
        seconds, fast = timed(lambda: evaluate_retrieval(query_t, query_l, gallery_t, gallery_l))
        fasts.append(seconds)
    return min(floors), min(fasts), [f / s for f, s in zip(fasts, floors)], fast


def compare(name, query_f, query_l, gallery_f, gallery_l, args, rng):
    num_queries = len(query_l)
    print(f"{name}: {num_queries} queries x {len(gallery_l)} gallery items, dim {query_f.shape[1]}", flush=True)
    query_t, gallery_t = torch.from_numpy(query_f), torch.from_numpy(gallery_f)
    floor_s, fast_s, paired, fast = floor_and_fast(query_t, query_l, gallery_t, gallery_l, args.repeat)

    sample = np.arange(num_queries)
    if 0 < args.loop_queries < num_queries:
        sample = np.sort(rng.choice(num_queries, args.loop_queries, replace=False))
    seconds, reference = timed(lambda: evaluate_retrieval_loop(query_f[sample], query_l[sample], gallery_f,
                                                               gallery_l))
    loop_s = seconds * num_queries / len(sample)
    checked = fast if len(sample) == num_queries else evaluate_retrieval(
        query_t[sample], query_l[sample], gallery_t, gallery_l)
    assert checked == reference, f"vectorized and loop metrics differ:\n{checked}\n{reference}"

    loop_note = "all queries" if len(sample) == num_queries else f"extrapolated from {len(sample)} random queries"
    print(f"  floor       {floor_s:8.3f} s  query x gallery matrix product alone (best of {args.repeat})")
    print(f"  vectorized  {fast_s:8.3f} s  {fast_s / floor_s:5.2f}x the floor (best of {args.repeat}; paired runs "
          f"{min(paired):.2f}x to {max(paired):.2f}x)  |  {loop_s / fast_s:.1f}x faster than the loop")
    print(f"  loop        {loop_s:8.3f} s  {loop_s / floor_s:5.2f}x the floor ({loop_note})")
    print(f"  metrics     {format_metrics(fast)}")
    print(f"  identical   vectorized == loop, every value bit for bit, on {len(sample)} queries", flush=True)
    return fast_s / floor_s, loop_s / fast_s


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    drone_f, drone_l, sat_f, sat_l, gallery_drone_f, gallery_drone_l = synthetic_views(args.scale, args.dim, rng)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {machine()}")
    results = {"Drone->Satellite": compare("Drone->Satellite", drone_f, drone_l, sat_f, sat_l, args, rng)}
    classes = max(1, round(TRAIN_CLASSES * args.scale))
    results["Satellite->Drone"] = compare("Satellite->Drone", sat_f[:classes], sat_l[:classes], gallery_drone_f,
                                          gallery_drone_l, args, rng)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    print("| direction | vectorized / floor | loop / vectorized |")
    print("|---|---:|---:|")
    for name, (to_floor, speed_up) in results.items():
        print(f"| {name} | {to_floor:.2f}x | {speed_up:.1f}x |")


if __name__ == "__main__":
    main()
