"""Binary descriptors: one bit per dimension, compared by Hamming distance.

A 1,536-dimensional float32 descriptor takes 6 KiB; its signs packed to bits take 192 bytes, 32
times less, and two of them compare with 24 XOR + popcount instructions instead of 1,536
multiply-adds. The code of a descriptor ``x`` has bit ``i`` set when ``x[i] >= 0`` (NaN counts as
negative); bits are packed eight to a byte, least significant bit first (the layout faiss's
binary indexes take), and a dimension count that is not a multiple of 8 is padded with zero bits,
which are equal in every code and so never change a distance. The sign does not depend on the
descriptor's scale, so the code of a normalised descriptor is that of the raw one.

Ranking: the gallery is ordered by ascending Hamming distance, ties in gallery order, which is the
protocol's stable descending order of the score ``D - 2 * hamming``: that score is the dot product
of the codes read as +-1 vectors, an integer of magnitude at most D, so float32 holds it exactly
and :func:`evaluate_codes` hands it to the protocol's own metrics (:mod:`evaluation.metrics`)
instead of re-implementing its tie, junk and AP rules. :func:`hamming_distances` is the popcount
itself (NumPy's ``bitwise_count`` on 64-bit words), used for top-K search and as the reference
the tests compare the ranking with.
"""
from typing import Dict, Optional

import numpy as np
import torch

from .metrics import evaluate_retrieval

DESCRIPTORS = ("float", "binary")
# Query rows per block of hamming_distances: bounds its (rows, gallery, words) XOR buffer.
_PAIR_WORDS_PER_BLOCK = 1 << 24


def check_descriptor(kind: str) -> str:
    """``kind`` if it is a descriptor kind (:data:`DESCRIPTORS`), else a ValueError."""
    if kind not in DESCRIPTORS:
        raise ValueError(f"descriptor={kind!r}: expected one of {', '.join(DESCRIPTORS)}")
    return kind


def code_bytes(dims: int) -> int:
    """Bytes of the code of a ``dims``-dimensional descriptor (192 for 1,536)."""
    if dims < 1:
        raise ValueError(f"dims={dims}: a descriptor has at least one dimension")
    return -(-dims // 8)


def pack_signs(features) -> np.ndarray:
    """(N, D) float descriptors -> (N, ceil(D / 8)) uint8 codes: bit i set where feature i >= 0."""
    features = torch.as_tensor(features).detach().cpu().float().numpy()
    if features.ndim != 2 or features.shape[1] == 0:
        raise ValueError(f"features of shape {features.shape}: expected (N, D) with D >= 1")
    return np.packbits(features >= 0, axis=1, bitorder="little")


def sign_vectors(codes, dims: int) -> torch.Tensor:
    """(N, D) float32 +-1 vectors of ``codes`` (+1 for a set bit): what the codes rank like under
    the dot product, since ``dot = D - 2 * hamming``."""
    codes = _check_codes(codes)
    if code_bytes(dims) != codes.shape[1]:
        raise ValueError(f"codes of {codes.shape[1]} bytes cannot hold {dims} dimensions")
    bits = np.unpackbits(codes, axis=1, count=dims, bitorder="little")
    return torch.from_numpy(bits.astype(np.float32) * 2 - 1)


def binarize(features) -> torch.Tensor:
    """Descriptors replaced by the +-1 vectors of their codes (for rankings done by dot product)."""
    return sign_vectors(pack_signs(features), torch.as_tensor(features).shape[1])


def _check_codes(codes) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2:
        raise ValueError(f"codes of dtype {codes.dtype} and shape {codes.shape}: expected (N, bytes) uint8")
    return codes


def _words(codes: np.ndarray) -> np.ndarray:
    """The codes as 64-bit words (zero bytes appended to a multiple of 8: they never differ)."""
    pad = -codes.shape[1] % 8
    if pad:
        codes = np.pad(codes, ((0, 0), (0, pad)))
    return np.ascontiguousarray(codes).view(np.uint64)


def hamming_distances(query_codes, gallery_codes) -> np.ndarray:
    """(Q, G) int32 Hamming distances between two sets of codes of the same length (popcount of
    the XOR, 64 bits at a time, in blocks of queries so the XOR buffer stays ~128 MB)."""
    query_codes, gallery_codes = _check_codes(query_codes), _check_codes(gallery_codes)
    if query_codes.shape[1] != gallery_codes.shape[1]:
        raise ValueError(f"query codes of {query_codes.shape[1]} bytes and gallery codes of "
                         f"{gallery_codes.shape[1]} bytes cannot be compared")
    query, gallery = _words(query_codes), _words(gallery_codes)
    distances = np.empty((len(query), len(gallery)), dtype=np.int32)
    block = max(1, _PAIR_WORDS_PER_BLOCK // max(1, gallery.size))
    for start in range(0, len(query), block):
        xor = np.bitwise_xor(query[start:start + block, None, :], gallery[None])
        distances[start:start + block] = np.bitwise_count(xor).sum(axis=2, dtype=np.int32)
    return distances


def hamming_top_k(query_codes, gallery_codes, k: int):
    """``(indices, distances)``, each (Q, min(k, G)): every query's ``k`` nearest gallery codes,
    nearest first, ties in gallery order (the protocol's order)."""
    if k < 1:
        raise ValueError(f"k={k}: expected at least 1")
    distances = hamming_distances(query_codes, gallery_codes)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(distances, order, axis=1)


def evaluate_codes(query_codes, query_labels, gallery_codes, gallery_labels, dims: int,
                   chunk_size: Optional[int] = None) -> Dict[str, float]:
    """Recall@K / AP (as :func:`evaluation.metrics.evaluate_retrieval`) of Hamming ranking."""
    return evaluate_retrieval(sign_vectors(query_codes, dims), query_labels, sign_vectors(gallery_codes, dims),
                              gallery_labels, chunk_size)


def evaluate_descriptors(query_features, query_labels, gallery_features, gallery_labels, descriptor: str = "float",
                         device="cpu") -> Dict[str, float]:
    """Recall@K / AP of float descriptors, ranked as ``descriptor`` says: by dot product (float) or
    by the Hamming distance of their codes (binary). Work runs on ``device``."""
    if check_descriptor(descriptor) == "binary":
        query_features, gallery_features = binarize(query_features), binarize(gallery_features)
    return evaluate_retrieval(torch.as_tensor(query_features).to(device), query_labels,
                              torch.as_tensor(gallery_features).to(device), gallery_labels)
