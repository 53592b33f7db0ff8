"""Search time per query and memory of gallery indexes from 10^4 to 10^7 items, on synthetic codes.

    python -m benchmarks.gallery_scale                       # 1e4 1e5 1e6, 1 and 2 threads
    python -m benchmarks.gallery_scale --sizes 10000000 --kinds binary-exact binary-ivf

Kinds: ``float-exact`` (``IndexFlatIP`` over 1,536 float32 dims, 6 KiB an item), ``binary-exact``
(``IndexBinaryFlat``, 192 bytes an item, Hamming by popcount), ``binary-ivf`` (``IndexBinaryIVF``,
``nlist`` = sqrt(N) lists trained on a 20-per-list sample, ``--nprobe`` lists scanned) and
``binary-hnsw`` (``IndexBinaryHNSW``, ``--hnsw_m`` links, beam ``--ef_search``). The approximate
kinds report recall@1 against exact search over the same codes: the share of queries whose best
distance found equals the exact best distance.

Synthetic data with the structure that makes search meaningful: a gallery of clusters (one random
centre per 100 items, each item its centre with every bit flipped with probability 1/4) and queries
that are gallery items with every bit flipped with probability 1/8, so each query has one clear
nearest item (Hamming ~192 against ~576 within its cluster). Float items are Gaussian vectors (the
float search time does not depend on the values). Memory: ``bytes/item`` counts what the index's
structures hold (codes or vectors; IVF list ids and centroids; HNSW links and levels), ``RSS
growth`` is how much the process's resident set grew while it was built (items are added in
chunks so the source never doubles it; small sizes are noise). ``items/s`` is items compared per second per query stream: exact
binary search against the popcount bound of ``--ghz`` (1,536-bit Hamming = 24 64-bit XOR +
popcount, at one 64-bit popcount per cycle and core).
"""
import argparse
import time

import faiss
import numpy as np

DIMS, CODE_BYTES = 1536, 192
KINDS = ("float-exact", "binary-exact", "binary-ivf", "binary-hnsw")
CHUNK = 1 << 16
POPCOUNTS_PER_ITEM = DIMS // 64


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def random_bits(rng, shape, ands: int) -> np.ndarray:
    """uint8 array whose bits are 1 with probability 2^-ands (AND of uniform random bytes)."""
    bits = rng.integers(0, 256, size=shape, dtype=np.uint8)
    for _ in range(ands - 1):
        bits &= rng.integers(0, 256, size=shape, dtype=np.uint8)
    return bits


def binary_chunks(size: int, seed: int):
    """Gallery codes in chunks: cluster centres XOR bits flipped with probability 1/4."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 256, size=(max(1, size // 100), CODE_BYTES), dtype=np.uint8)
    for start in range(0, size, CHUNK):
        count = min(CHUNK, size - start)
        yield centres[rng.integers(0, len(centres), count)] ^ random_bits(rng, (count, CODE_BYTES), 2)


def make_queries(kind: str, sources: np.ndarray, seed: int) -> np.ndarray:
    """Queries near gallery items: every bit flipped with probability 1/8 (binary), Gaussian noise
    of half the item's norm (float)."""
    rng = np.random.default_rng(seed + 1)
    if kind == "float-exact":
        return sources + 0.5 * rng.standard_normal(sources.shape, dtype=np.float32) / np.sqrt(DIMS)
    return sources ^ random_bits(rng, sources.shape, 3)


def float_chunks(size: int, seed: int):
    rng = np.random.default_rng(seed)
    for start in range(0, size, CHUNK):
        chunk = rng.standard_normal((min(CHUNK, size - start), DIMS), dtype=np.float32)
        yield chunk / np.linalg.norm(chunk, axis=1, keepdims=True)


def build(kind: str, size: int, opts):
    """(index, build seconds, memory growth in bytes, ``opts.queries`` random items kept as query
    sources) of ``kind`` over ``size`` synthetic items."""
    picked = np.sort(np.random.default_rng(opts.seed + 2).choice(size, min(opts.queries, size), replace=False))
    sources = []
    before, start = rss_bytes(), time.perf_counter()
    if kind == "float-exact":
        index, chunks = faiss.IndexFlatIP(DIMS), float_chunks(size, opts.seed)
    else:
        chunks = binary_chunks(size, opts.seed)
        if kind == "binary-exact":
            index = faiss.IndexBinaryFlat(DIMS)
        elif kind == "binary-hnsw":
            index = faiss.IndexBinaryHNSW(DIMS, opts.hnsw_m)
        else:
            nlist = max(1, round(size ** 0.5))
            index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(DIMS), DIMS, nlist)
            sample = np.concatenate(list(binary_chunks(min(size, 20 * nlist), opts.seed)))
            index.train(sample)
            index.nprobe = min(opts.nprobe, nlist)
    for first, chunk in zip(range(0, size, CHUNK), chunks):
        index.add(chunk)
        sources.append(chunk[picked[(picked >= first) & (picked < first + len(chunk))] - first])
    if kind == "binary-hnsw":
        index.hnsw.efSearch = opts.ef_search
    return index, time.perf_counter() - start, rss_bytes() - before, np.concatenate(sources)


def index_bytes(index, kind: str) -> int:
    """Bytes the index's own structures hold: codes or vectors, IVF list ids, HNSW links and levels."""
    if kind in ("float-exact", "binary-exact"):
        return index.ntotal * (DIMS * 4 if kind == "float-exact" else CODE_BYTES)
    if kind == "binary-hnsw":
        hnsw = index.hnsw
        return (index.ntotal * CODE_BYTES + hnsw.neighbors.size() * 4 + hnsw.levels.size() * 4
                + hnsw.offsets.size() * 8)
    lists = index.invlists
    stored = sum(lists.list_size(i) for i in range(lists.nlist))
    return stored * (CODE_BYTES + 8) + index.nlist * CODE_BYTES  # codes + 64-bit ids + centroids


def timed_search(index, queries, k: int, repeats: int):
    """(best seconds per query over ``repeats`` runs of the whole batch, after one untimed warm-up
    run that starts the thread pool, distances, ids)."""
    index.search(queries, k)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        distances, ids = index.search(queries, k)
        best = min(best, (time.perf_counter() - start) / len(queries))
    return best, distances, ids


def measure(size: int, kind: str, opts, exact_best: dict) -> list:
    """One row per thread count: size, kind, threads, ms/query, items/s, bytes/item, build s, recall@1."""
    index, build_s, memory, sources = build(kind, size, opts)
    queries = make_queries(kind, sources, opts.seed)
    rows = []
    for threads in opts.threads:
        faiss.omp_set_num_threads(threads)
        seconds, distances, _ = timed_search(index, queries, opts.k, opts.repeats)
        if kind == "binary-exact":
            exact_best[size] = distances[:, 0].copy()
        recall = (float(np.mean(distances[:, 0] == exact_best[size])) if kind in ("binary-ivf", "binary-hnsw")
                  and size in exact_best else None)
        rows.append(dict(size=size, kind=kind, threads=threads, ms=seconds * 1e3, items_per_s=size / seconds,
                         bytes_per_item=index_bytes(index, kind) / size, rss_mb=memory / 2 ** 20,
                         build_s=build_s, recall=recall))
    del index
    return rows


def print_row(row: dict, ghz: float) -> None:
    bound = ghz * 1e9 / POPCOUNTS_PER_ITEM * row["threads"]
    versus = f"{row['items_per_s'] / bound:6.2f}" if row["kind"] == "binary-exact" else "     —"
    recall = "—" if row["recall"] is None else f"{100 * row['recall']:.1f}"
    print(f"| {row['size']:>10,} | {row['kind']:<12} | {row['threads']} | {row['ms']:10.3f} | "
          f"{row['items_per_s']:12.3e} | {versus} | {row['bytes_per_item']:8.0f} | {row['rss_mb']:9.0f} | "
          f"{row['build_s']:8.1f} | "
          f"{recall:>6} |", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="gallery items")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="indexes to measure")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="faiss threads to time each index with")
    p.add_argument("--queries", type=int, default=100, help="queries per timed batch")
    p.add_argument("--k", type=int, default=10, help="neighbours returned per query")
    p.add_argument("--repeats", type=int, default=3, help="timed batches (the fastest counts)")
    p.add_argument("--nprobe", type=int, default=16, help="binary-ivf: lists scanned per query")
    p.add_argument("--hnsw_m", type=int, default=16, help="binary-hnsw: links per item")
    p.add_argument("--ef_search", type=int, default=64, help="binary-hnsw: search beam width")
    p.add_argument("--ghz", type=float, default=None,
                   help="core clock for the popcount bound (default: the current 'cpu MHz' of /proc/cpuinfo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    opts = p.parse_args(argv)
    if opts.ghz is None:
        with open("/proc/cpuinfo") as f:
            opts.ghz = next(float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")) / 1e3
    return opts


def main(argv=None) -> None:
    opts = parse_args(argv)
    kinds = sorted(opts.kinds, key=KINDS.index)  # exact binary before the approximate ones it judges
    print(f"{opts.queries} queries, top-{opts.k}, best of {opts.repeats}; popcount bound at {opts.ghz:.2f} GHz = "
          f"{opts.ghz * 1e9 / POPCOUNTS_PER_ITEM:.3e} items/s per thread; faiss {faiss.__version__}")
    print("| items | index | threads | ms/query | items/s | ×bound | bytes/item | RSS growth MB | build s | "
          "R@1 vs exact % |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    exact_best = {}
    for size in opts.sizes:
        for kind in kinds:
            for row in measure(size, kind, opts, exact_best):
                print_row(row, opts.ghz)


if __name__ == "__main__":
    main()
