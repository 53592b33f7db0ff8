"""Brute-force references for binary descriptors: Hamming distance bit by bit, and protocol
metrics of a gallery ranked by it with the protocol's tie rule (gallery order)."""
import numpy as np

from evaluation.metrics import RECALL_AT, _compute_map, top1_percent_index


def brute_hamming(a: np.ndarray, b: np.ndarray) -> int:
    """Hamming distance of two codes, bit by bit through Python integers."""
    return bin(int.from_bytes(a.tobytes(), "little") ^ int.from_bytes(b.tobytes(), "little")).count("1")


def brute_metrics(query_codes, query_labels, gallery_codes, gallery_labels):
    """Protocol metrics of the gallery ranked by ascending Hamming distance, ties in gallery order."""
    cmc, ap = np.zeros(len(gallery_labels)), 0.0
    junk = np.flatnonzero(gallery_labels == -1)
    for code, label in zip(query_codes, query_labels):
        distance = np.array([brute_hamming(code, g) for g in gallery_codes])
        order = np.argsort(distance, kind="stable")
        good = np.flatnonzero(gallery_labels == label) if label != -1 else np.empty(0, np.int64)
        ap_one, cmc_one = _compute_map(order, good, junk)
        if cmc_one[0] != -1:
            cmc, ap = cmc + cmc_one, ap + ap_one
    cmc /= len(query_labels)
    last = len(cmc) - 1
    metrics = {f"recall@{k}": 100 * cmc[min(k - 1, last)] for k in RECALL_AT}
    metrics["recall@top1"] = 100 * cmc[min(top1_percent_index(len(gallery_labels)), last)]
    metrics["ap"] = 100 * ap / len(query_labels)
    return metrics
