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

Three points the official code leaves open are fixed here, identically in both implementations:

* Tie rule: equal scores keep gallery order (a stable descending sort). The official code uses
  NumPy's default quicksort, whose order among equal scores is unspecified.
* A query labelled -1 has no good item (the official code raises IndexError for it).
* Recall@K for K larger than the gallery is the fraction of queries with any good item (the
  official code indexes past the end of its CMC vector).

:func:`evaluate_retrieval` is the fast implementation (torch, chunks of queries, runs on the
device of its inputs); :func:`evaluate_retrieval_loop` is the per-query NumPy reference.
"""
from typing import Dict, Optional, Tuple

import numpy as np
import torch

RECALL_AT = (1, 5, 10)
METRIC_NAMES = tuple(f"recall@{k}" for k in RECALL_AT) + ("recall@top1", "ap")

# A chunk of queries spans about this many (query, gallery) pairs: large enough for an efficient
# matrix multiply, small enough that the int64 rank keys of a chunk stay around 32 MB.
_PAIRS_PER_CHUNK = 1 << 22
_INT64_MIN = torch.iinfo(torch.int64).min
_INT64_MAX = torch.iinfo(torch.int64).max


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


def _descending_keys(scores: torch.Tensor) -> torch.Tensor:
    """Unique int64 keys whose descending order is the stable descending order of each row.

    High 32 bits: the float32 score mapped onto an order-preserving int32 (sign-magnitude to
    two's complement, so -0.0 and +0.0 get the same value); low 32 bits: 2^32 - 1 - gallery
    index, so that among equal scores the earlier gallery item ranks first. With unique keys the
    rank of an item is the number of larger keys, which needs no sort of the whole gallery.
    """
    bits = scores.contiguous().view(torch.int32)
    sign = bits >> 31  # 0 for non-negative scores, -1 for negative ones
    ordered = ((bits & 0x7FFFFFFF) ^ sign) - sign
    tie_break = (2 ** 32 - 1) - torch.arange(scores.shape[1], dtype=torch.int64, device=scores.device)
    return (ordered.to(torch.int64) << 32) | tie_break


def _chunk_ranks(scores, good_index, n_good, junk) -> Tuple[torch.Tensor, torch.Tensor]:
    """First-good rank and AP for one chunk of queries.

    ``good_index`` (C, M) holds the gallery positions of each query's good items (entries past
    ``n_good`` are padding). Each good item's rank is the number of non-junk gallery items with a
    larger key: a searchsorted of every gallery key among the query's sorted good keys, a
    histogram of the bucket numbers and a suffix sum give all those counts in O(G log M) per
    query, where a full sort of the gallery would cost O(G log G).
    """
    keys = _descending_keys(scores)
    if junk is not None:
        keys.masked_fill_(junk, _INT64_MIN)  # below every good key: never counted before one
    positions = torch.arange(good_index.shape[1], device=scores.device)
    padding = positions >= n_good[:, None]
    thresholds = keys.gather(1, good_index).masked_fill_(padding, _INT64_MAX).sort(dim=1).values
    bucket = torch.searchsorted(thresholds, keys)  # number of good keys below each gallery key
    histogram = torch.zeros(keys.shape[0], thresholds.shape[1] + 1, dtype=torch.int64, device=keys.device)
    histogram.scatter_add_(1, bucket, torch.ones(1, 1, dtype=torch.int64, device=keys.device).expand_as(bucket))
    # thresholds[:, t] is ranked after exactly the items whose bucket is > t: its 0-based rank.
    rank = histogram.flip(1).cumsum(1).flip(1)[:, 1:].double()
    # Ascending position t holds the good item with n_good - 1 - t good items ranked before it.
    before = (n_good[:, None] - 1 - positions).double()
    precision = (before + 1) / (rank + 1)
    old_precision = torch.where(rank > 0, before / rank.clamp(min=1), torch.ones_like(rank))
    ap = ((old_precision + precision).masked_fill_(padding, 0).sum(1) / (2 * n_good.clamp(min=1)))
    first = rank.gather(1, (n_good - 1).clamp(min=0)[:, None]).squeeze(1).long()
    return first.masked_fill_(n_good == 0, -1), ap


def retrieval_ranks(query_features, query_labels, gallery_features, gallery_labels,
                    chunk_size: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per query: the 0-based rank of its first good item after junk removal (-1 without any good
    item; the query's CMC is 1 from there on) and its AP (float64, fraction, 0 without good item).

    Features are (N, D) arrays or tensors, labels (N,) integers. The work is done on the device of
    ``query_features`` in chunks of ``chunk_size`` queries (default: about 4M query-gallery pairs
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
    if chunk_size is None:
        chunk_size = max(1, _PAIRS_PER_CHUNK // gallery_size)

    # Padding every query to the same number of good items keeps results bitwise independent
    # of the chunk size.
    offsets = torch.arange(max(int(n_good.max()), 1), device=device)
    first_ranks, aps = [], []
    for start in range(0, len(query_labels), chunk_size):
        rows = slice(start, start + chunk_size)
        good_index = by_label[(good_start[rows, None] + offsets).clamp(max=gallery_size - 1)]
        scores = query_features[rows] @ gallery_features.T
        first, ap = _chunk_ranks(scores, good_index, n_good[rows], junk)
        first_ranks.append(first)
        aps.append(ap)
    return torch.cat(first_ranks), torch.cat(aps)


def evaluate_retrieval(query_features, query_labels, gallery_features, gallery_labels,
                       chunk_size: Optional[int] = None) -> Dict[str, float]:
    """Recall@1/5/10, Recall@top1 and AP in percent, keyed as in :data:`METRIC_NAMES`."""
    first_rank, ap = retrieval_ranks(query_features, query_labels, gallery_features, gallery_labels,
                                     chunk_size)
    matched = first_rank >= 0
    num_queries = len(first_rank)
    cutoffs = {f"recall@{k}": k - 1 for k in RECALL_AT}
    cutoffs["recall@top1"] = top1_percent_index(len(gallery_labels))
    metrics = {name: 100.0 * int((matched & (first_rank <= last)).sum()) / num_queries
               for name, last in cutoffs.items()}
    metrics["ap"] = 100.0 * float(ap.sum()) / num_queries
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
