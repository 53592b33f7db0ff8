"""Retrieval metrics of the University-1652 protocol: Recall@1/5/10, Recall@top1% and AP.

The semantics are those of the official ``evaluate``/``compute_mAP`` (docs/method.md §4):

* score = dot product of query and gallery features; the gallery is ranked by descending score;
* good = gallery items carrying the query's label; junk = gallery items labelled -1, removed from
  the ranking before ranks are counted;
* a query without any good item contributes 0 to every metric but counts in the denominator;
* CMC is 1 from the (junk-removed, 0-based) rank of the first good item on; Recall@K = CMC[K-1];
  Recall@top1 = CMC[round(0.01 * gallery size)] with the full gallery size;
* AP is the trapezoid rule: for the i-th good item at rank r_i, p_i = (i+1)/(r_i+1) and
  o_i = i/r_i (1 when r_i = 0); AP = sum_i (o_i + p_i) / (2 * n_good).

Four points the official code leaves open are fixed here, identically in both implementations:

* Tie rule: equal scores keep gallery order (a stable descending sort). The official code uses
  NumPy's default quicksort, whose order among equal scores is unspecified.
* A query labelled -1 has no good item (the official code raises IndexError for it).
* Recall@K for K larger than the gallery is the fraction of queries with any good item (the
  official code indexes past the end of its CMC vector).
* A NaN score ranks after every other score (NaN among themselves in gallery order), where
  NumPy's sort puts it.

:func:`evaluate_retrieval` is the fast implementation (torch, chunks of queries, runs on the
device of its inputs). It never sorts the gallery: only the ranks of the good items are needed,
and each is a count of the items ranked before it (:func:`_good_ranks`), so ranking and metrics
cost little more than the query x gallery matrix product (``python -m benchmarks.metrics_speed``).
:func:`evaluate_retrieval_loop` is the per-query NumPy reference.
"""
import math
from typing import Dict, Optional, Tuple

import numpy as np
import torch

RECALL_AT = (1, 5, 10)
METRIC_NAMES = tuple(f"recall@{k}" for k in RECALL_AT) + ("recall@top1", "ap")

# A chunk of queries spans about this many (query, gallery) pairs: large enough for an efficient
# matrix multiply, small enough that its buffers (13 bytes a pair: float32 scores and positions,
# int32 bins, bool flags; allocated once, see _Workspace) stay around 200 MB.
_PAIRS_PER_CHUNK = 1 << 24
# Score bins per good item (at most _MAX_BINS per query): more bins, fewer items to compare exactly.
_BINS_PER_GOOD, _MAX_BINS = 64, 4096
_INT64_MIN = torch.iinfo(torch.int64).min
_NAN_ORDER = -0x7F800001  # order value of NaN: one below -inf (-0x7F800000)


def count_unmatched(query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> int:
    """How many queries have no good item in the gallery (they score 0 by protocol)."""
    real = gallery_labels[gallery_labels != -1]
    return int((~torch.isin(query_labels, real)).sum())


def top1_percent_index(gallery_size: int) -> int:
    """CMC index reported as Recall@top1, written as in the official code (Python's round)."""
    return round(gallery_size * 0.01)


def format_metrics(metrics: Dict[str, float]) -> str:
    """The familiar one-line University-1652 summary of :func:`evaluate_retrieval`'s result."""
    return "Recall@1:{:.2f} Recall@5:{:.2f} Recall@10:{:.2f} Recall@top1:{:.2f} AP:{:.2f}".format(
        *(metrics[name] for name in METRIC_NAMES))


def _descending_keys(scores: torch.Tensor, gallery_index: torch.Tensor) -> torch.Tensor:
    """Unique int64 keys whose descending order is the stable descending order of the scores.

    High 32 bits: the float32 score mapped onto an order-preserving int32 (sign-magnitude to
    two's complement, so -0.0 and +0.0 get the same value; NaN just below -inf, since NumPy sorts
    NaN last); low 32 bits: 2^32 - 1 - gallery index, so that among equal scores the earlier
    gallery item ranks first. ``scores`` and ``gallery_index`` have the same shape.
    """
    bits = scores.contiguous().view(torch.int32)
    sign = bits >> 31  # 0 for non-negative scores, -1 for negative ones
    ordered = (((bits & 0x7FFFFFFF) ^ sign) - sign).masked_fill_(torch.isnan(scores), _NAN_ORDER)
    return (ordered.to(torch.int64) << 32) | ((2 ** 32 - 1) - gallery_index)


def _score_bins(scores, good_scores, valid, junk, bins, work) -> torch.Tensor:
    """Bin numbers (C, G) int32, in each row a monotone non-decreasing function of the score.

    Row r uses the bins r * (bins + 4) + 0 .. bins + 3: 0 holds the junk items; an affine map
    spreads the range of the row's good scores over about ``bins`` bins, items far below land in
    bin 1, far above in bin bins + 3, NaN in bin 1 (NaN ranks last). Only the monotonicity matters
    for the results, and it holds whatever the row's parameters: every step (subtract, multiply,
    clamp, truncate) is a correctly rounded, hence monotone, elementwise operation applied alike to
    every item of the row. The parameters only decide how many items share a bin with a good item
    and must be compared exactly. ``work`` supplies the output buffers.
    """
    inf = torch.tensor(float("inf"), device=scores.device)
    low = torch.where(valid, good_scores, inf).amin(1, keepdim=True).double()
    high = torch.where(valid, good_scores, -inf).amax(1, keepdim=True).double()
    # Not narrower than ~2^-18 of the scores' magnitude, where float32 steps would merge bins anyway.
    width = ((high - low) / bins).maximum(low.abs() * 2.0 ** -18).clamp(min=1e-30)
    usable = torch.isfinite(low) & torch.isfinite(high) & torch.isfinite(width)
    origin = torch.where(usable, low - 2.5 * width, torch.zeros_like(low)).float()
    scale = torch.where(usable, 1 / width, torch.ones_like(width)).float()
    position = torch.sub(scores, origin, out=work.view("position", *scores.shape))
    position.mul_(scale).clamp_(1, bins + 3).nan_to_num_(nan=1.0)
    if junk is not None:
        position.masked_fill_(junk, 0)
    item_bin = work.view("bin", *scores.shape).copy_(position)
    first_bin = torch.arange(len(scores), dtype=torch.int32, device=scores.device) * (bins + 4)
    return item_bin.add_(first_bin[:, None])


class _Workspace:
    """Flat buffers reused by every chunk, so that the large per-chunk arrays are allocated once."""

    def __init__(self, pairs: int, device):
        self.buffers = {"scores": torch.empty(pairs, device=device),
                        "position": torch.empty(pairs, device=device),
                        "bin": torch.empty(pairs, dtype=torch.int32, device=device),
                        "shared": torch.empty(pairs, dtype=torch.bool, device=device)}

    def view(self, name: str, *shape: int) -> torch.Tensor:
        return self.buffers[name][:math.prod(shape)].view(shape)


def _exact_counts(scores, rows, cols, good_keys) -> torch.Tensor:
    """For each good key (C, M): how many of the items (rows, cols) rank strictly before it."""
    per_row = torch.bincount(rows, minlength=len(scores))
    width = max(int(per_row.max()), 1)
    slot = torch.arange(len(rows), device=rows.device) - (per_row.cumsum(0) - per_row)[rows]
    keys = torch.full((len(scores), width), _INT64_MIN, dtype=torch.int64, device=scores.device)
    keys[rows, slot] = _descending_keys(scores[rows, cols], cols)
    # Padding (INT64_MIN) sorts first and never counts: width - #keys <= good key = #keys above.
    return width - torch.searchsorted(keys.sort(dim=1).values, good_keys, right=True)


def _good_ranks(scores, good_index, valid, junk, bins, work) -> torch.Tensor:
    """Ranks (C, M) of each query's good items, best first (padding: garbage, last).

    A rank is the number of non-junk gallery items ranked before the good item: counted, not
    sorted. Each score goes to a bin by a monotone map (:func:`_score_bins`), so an item in a
    higher bin than a good item ranks before it and one in a lower bin after it; a histogram of
    the bins counts those. The few items sharing a bin with a good item (the good items
    themselves, ties, near ties) are compared exactly, by score and then gallery order.
    """
    num_rows, gallery_size = scores.shape
    good_scores = scores.gather(1, good_index)
    item_bin = _score_bins(scores, good_scores, valid, junk, bins, work)
    first_bin = torch.arange(num_rows, device=scores.device)[:, None] * (bins + 4)
    good_bin = torch.where(valid, item_bin.gather(1, good_index).long(), first_bin)
    shared = torch.zeros(num_rows * (bins + 4), dtype=torch.bool, device=scores.device)
    shared[good_bin.view(-1)] = True
    shared[first_bin.view(-1)] = False  # junk
    flat_bin = item_bin.view(-1)
    flagged = torch.index_select(shared, 0, flat_bin, out=work.view("shared", len(flat_bin)))
    exact = flagged.nonzero().squeeze(1)  # flat positions of the items to compare exactly
    counts = torch.bincount(flat_bin, minlength=len(shared))
    counts.index_put_((flat_bin[exact].long(),), torch.full_like(exact, -1), accumulate=True)
    at_or_below = counts.cumsum(0)  # over the rows' bins in turn
    higher = at_or_below[first_bin + bins + 3] - at_or_below[good_bin]  # in the row, above the bin
    good_keys = _descending_keys(good_scores, good_index).masked_fill_(~valid, _INT64_MIN)
    good_keys, order = good_keys.sort(dim=1, descending=True)  # best first, padding last
    exact_before = _exact_counts(scores, exact // gallery_size, exact % gallery_size, good_keys)
    return higher.gather(1, order) + exact_before


def _chunk_metrics(good_rank, n_good) -> Tuple[torch.Tensor, np.ndarray]:
    """First-good rank and AP of each query from its good items' ranks (best first, padding last).

    Every AP term is computed with the reference's operations and summed in the reference's
    order (``np.add.accumulate`` is a running sum), so that the AP is bitwise the reference's.
    """
    rank = good_rank.double()
    i = torch.arange(rank.shape[1], dtype=torch.float64, device=rank.device).expand_as(rank)
    good = n_good.clamp(min=1).double()[:, None]
    precision = (i + 1) / (rank + 1)
    old_precision = torch.where(rank != 0, i / rank.clamp(min=1), torch.ones_like(rank))
    terms = (torch.ones_like(good) / good) * (old_precision + precision) / 2
    terms.masked_fill_(i >= n_good[:, None], 0)  # adding 0.0 leaves a running sum unchanged
    first = good_rank[:, 0].masked_fill(n_good == 0, -1)
    return first, np.add.accumulate(terms.cpu().numpy(), axis=1)[:, -1]


def retrieval_ranks(query_features, query_labels, gallery_features, gallery_labels,
                    chunk_size: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per query: the 0-based rank of its first good item after junk removal (-1 without any good
    item; the query's CMC is 1 from there on; on the features' device) and its AP (float64 on the
    CPU, fraction, 0 without good item).

    Features are (N, D) arrays or tensors, labels (N,) integers. The work is done on the device of
    ``query_features`` in chunks of ``chunk_size`` queries (default: about 16M query-gallery pairs
    per chunk); results do not depend on the chunk size.
    """
    query_features = torch.as_tensor(query_features)
    device = query_features.device
    query_features = query_features.float()
    gallery_features = torch.as_tensor(gallery_features, device=device).float()
    query_labels = torch.as_tensor(query_labels, device=device).long()
    gallery_labels = torch.as_tensor(gallery_labels, device=device).long()
    if len(query_labels) == 0 or len(gallery_labels) == 0:
        raise ValueError("retrieval needs at least one query and one gallery item")
    if len(query_features) != len(query_labels) or len(gallery_features) != len(gallery_labels):
        raise ValueError("every feature row needs exactly one label")

    gallery_size = len(gallery_labels)
    junk_mask = gallery_labels == -1
    junk = junk_mask[None] if bool(junk_mask.any()) else None
    # The good items of a query are one run of the gallery sorted by label.
    sorted_labels, by_label = torch.sort(gallery_labels, stable=True)
    good_start = torch.searchsorted(sorted_labels, query_labels)
    n_good = torch.searchsorted(sorted_labels, query_labels, right=True) - good_start
    n_good.masked_fill_(query_labels == -1, 0)
    # Padding every query to the same number of good items keeps results bitwise independent
    # of the chunk size.
    offsets = torch.arange(max(int(n_good.max()), 1), device=device)
    bins = min(_MAX_BINS, _BINS_PER_GOOD * len(offsets))
    chunk_size = min(chunk_size or max(1, _PAIRS_PER_CHUNK // gallery_size),
                     len(query_labels), (2 ** 31 - 1) // (bins + 4))  # int32 bin numbers
    chunk_size = -(-len(query_labels) // -(-len(query_labels) // chunk_size))  # as many, but equal, chunks
    work = _Workspace(chunk_size * gallery_size, device)
    first_ranks, aps = [], []
    for start in range(0, len(query_labels), chunk_size):
        rows = slice(start, start + chunk_size)
        good_index = by_label[(good_start[rows, None] + offsets).clamp(max=gallery_size - 1)]
        query = query_features[rows]
        scores = torch.mm(query, gallery_features.T, out=work.view("scores", len(query), gallery_size))
        good_rank = _good_ranks(scores, good_index, offsets < n_good[rows, None], junk, bins, work)
        first, ap = _chunk_metrics(good_rank, n_good[rows])
        first_ranks.append(first)
        aps.append(ap)
    return torch.cat(first_ranks), torch.from_numpy(np.concatenate(aps))


def evaluate_retrieval(query_features, query_labels, gallery_features, gallery_labels,
                       chunk_size: Optional[int] = None) -> Dict[str, float]:
    """Recall@1/5/10, Recall@top1 and AP in percent, keyed as in :data:`METRIC_NAMES`."""
    first_rank, ap = retrieval_ranks(query_features, query_labels, gallery_features, gallery_labels,
                                     chunk_size)
    matched = first_rank >= 0
    num_queries = len(first_rank)
    cutoffs = {f"recall@{k}": k - 1 for k in RECALL_AT}
    cutoffs["recall@top1"] = top1_percent_index(len(gallery_labels))
    # The reference's arithmetic: CMC count / queries, then x 100; APs summed in query order.
    metrics = {name: 100.0 * (int((matched & (first_rank <= last)).sum()) / num_queries)
               for name, last in cutoffs.items()}
    metrics["ap"] = 100.0 * float(np.add.accumulate(ap.numpy())[-1]) / num_queries
    return metrics


def _compute_map(index: np.ndarray, good_index: np.ndarray, junk_index: np.ndarray):
    """The official ``compute_mAP``: AP and CMC vector of one query from its ranked gallery."""
    ap = 0.0
    cmc = np.zeros(len(index), dtype=np.int64)
    if good_index.size == 0:
        cmc[0] = -1
        return ap, cmc
    index = index[np.isin(index, junk_index, invert=True)]
    ngood = len(good_index)
    rows_good = np.flatnonzero(np.isin(index, good_index))
    cmc[rows_good[0]:] = 1
    for i in range(ngood):
        d_recall = 1.0 / ngood
        precision = (i + 1) * 1.0 / (rows_good[i] + 1)
        old_precision = i * 1.0 / rows_good[i] if rows_good[i] != 0 else 1.0
        ap = ap + d_recall * (old_precision + precision) / 2
    return ap, cmc


def evaluate_retrieval_loop(query_features, query_labels, gallery_features, gallery_labels
                            ) -> Dict[str, float]:
    """Reference: the official University-1652 evaluation written literally, one query at a time.

    This is the specification :func:`evaluate_retrieval` is tested and benchmarked against, so it
    stays a plain transcription of ``evaluate`` + ``compute_mAP`` in NumPy, with only the three
    rules of the module docstring (stable sort, label -1, K past the gallery) made explicit.
    """
    query_features = np.asarray(query_features, dtype=np.float32)
    gallery_features = np.asarray(gallery_features, dtype=np.float32)
    query_labels = np.asarray(query_labels)
    gallery_labels = np.asarray(gallery_labels)
    if len(query_labels) == 0 or len(gallery_labels) == 0:
        raise ValueError("retrieval needs at least one query and one gallery item")
    cmc = np.zeros(len(gallery_labels), dtype=np.int64)
    ap = 0.0
    for feature, label in zip(query_features, query_labels):
        score = gallery_features @ feature
        index = np.argsort(-score, kind="stable")
        good_index = np.flatnonzero(gallery_labels == label) if label != -1 else np.empty(0, np.int64)
        junk_index = np.flatnonzero(gallery_labels == -1)
        ap_tmp, cmc_tmp = _compute_map(index, good_index, junk_index)
        if cmc_tmp[0] == -1:
            continue
        cmc = cmc + cmc_tmp
        ap += ap_tmp
    cmc = cmc / len(query_labels)
    last = len(cmc) - 1
    metrics = {f"recall@{k}": 100.0 * float(cmc[min(k - 1, last)]) for k in RECALL_AT}
    metrics["recall@top1"] = 100.0 * float(cmc[min(top1_percent_index(len(gallery_labels)), last)])
    metrics["ap"] = 100.0 * float(ap) / len(query_labels)
    return metrics
