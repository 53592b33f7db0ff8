"""Binary descriptors: packing, popcount Hamming distances and Hamming-ranked metrics against a
brute-force reference that ranks by Hamming distance with the protocol's tie rule."""
import numpy as np
import pytest
import torch

from evaluation.binary_codes import (binarize, code_bytes, evaluate_codes, evaluate_descriptors, hamming_distances,
                                     hamming_top_k, pack_signs, sign_vectors)
from evaluation.metrics import METRIC_NAMES
from evaluation.records import latest_record, record_key

from helpers.hamming import brute_hamming, brute_metrics


def test_pack_signs_hand_case():
    features = np.array([[0.5, -1.0, 0.0, np.nan, -0.0, 2.0, -3.0, 1.0, 4.0, -1.0]], np.float32)
    codes = pack_signs(features)
    # bits, least significant first: 1 0 1 0 1 1 0 1 | 1 0 (zero padded); -0.0 >= 0 holds
    assert codes.tolist() == [[0b10110101, 0b00000001]]
    assert code_bytes(1536) == 192 and pack_signs(np.ones((3, 1536))).shape == (3, 192)
    assert sign_vectors(codes, 10).tolist() == [[1, -1, 1, -1, 1, 1, -1, 1, 1, -1]]
    # the code ignores scale
    assert (pack_signs(features * 7.5) == codes).all()


@pytest.mark.parametrize("dims", [3, 64, 100, 1536])
def test_hamming_distances_match_bitwise_reference(dims):
    rng = np.random.default_rng(dims)
    query = pack_signs(rng.normal(size=(7, dims)))
    gallery = pack_signs(rng.normal(size=(11, dims)))
    expected = [[brute_hamming(q, g) for g in gallery] for q in query]
    assert hamming_distances(query, gallery).tolist() == expected
    # D - 2 * hamming is the dot product of the +-1 vectors
    dots = sign_vectors(query, dims) @ sign_vectors(gallery, dims).T
    assert torch.equal(dots, dims - 2 * torch.tensor(expected, dtype=torch.float32))


def test_top_k_keeps_gallery_order_among_ties():
    gallery = np.array([[0b0011], [0b0001], [0b0111], [0b0001], [0b0000]], np.uint8)
    query = np.array([[0b0001]], np.uint8)
    order, distances = hamming_top_k(query, gallery, 4)
    assert order.tolist() == [[1, 3, 0, 4]] and distances.tolist() == [[0, 0, 1, 1]]
    assert hamming_top_k(query, gallery, 99)[0].shape == (1, 5)


@pytest.mark.parametrize("seed", range(5))
def test_hamming_metrics_match_brute_force_with_ties_junk_and_unmatched(seed):
    rng = np.random.default_rng(seed)
    dims = int(rng.integers(3, 12))  # few bits: many equal distances, so the tie rule matters
    num_gallery, num_query = int(rng.integers(20, 90)), int(rng.integers(5, 40))
    gallery_features = rng.normal(size=(num_gallery, dims)).astype(np.float32)
    query_features = rng.normal(size=(num_query, dims)).astype(np.float32)
    gallery_labels = rng.integers(-1, 8, size=num_gallery)
    query_labels = rng.integers(-1, 11, size=num_query)
    query_codes, gallery_codes = pack_signs(query_features), pack_signs(gallery_features)
    expected = brute_metrics(query_codes, query_labels, gallery_codes, gallery_labels)
    assert 0 < expected["ap"] < 100
    for metrics in (evaluate_codes(query_codes, query_labels, gallery_codes, gallery_labels, dims, chunk_size=3),
                    evaluate_descriptors(query_features, query_labels, gallery_features, gallery_labels, "binary")):
        for name in METRIC_NAMES:
            assert metrics[name] == pytest.approx(expected[name], abs=1e-9), name


def test_binary_ranking_ties_where_float_does_not():
    # Both gallery codes equal the query's (signs +, +; 0.0 counts as positive): the distances tie
    # and gallery order puts the wrong place (label 0) first, where float scores tell them apart.
    query, gallery = np.array([[1.0, 0.1]]), np.array([[0.2, 0.3], [1.0, 0.0]])
    assert evaluate_descriptors(query, [1], gallery, [0, 1], "float")["recall@1"] == 100.0
    binary = evaluate_descriptors(query, [1], gallery, [0, 1], "binary")
    assert binary["recall@1"] == 0.0 and binary["recall@5"] == 100.0 and binary["ap"] == 25.0  # trapezoid: (0/1 + 1/2) / 2
    assert torch.equal(binarize(np.array([[0.3, -2.0]])), torch.tensor([[1.0, -1.0]]))
    with pytest.raises(ValueError, match="descriptor"):
        evaluate_descriptors(query, [1], gallery, [0, 1], "int8")


def test_binary_results_never_mix_with_float_results():
    record = dict(dataset="university", direction="Drone->Satellite", checkpoint="last.pth", h=64, w=64, flip=False,
                  engine="float", device="cpu", precision="fp32", time="2026-01-01T00:00:00")
    float_key = record_key(record)
    assert float_key == "university/Drone->Satellite/last.pth/64x64/noflip/float/cpu-fp32"  # keys of older files
    assert record_key(dict(record, descriptor="float")) == float_key
    binary = dict(record, descriptor="binary", time="2026-01-02T00:00:00", **{"recall@1": 1.0})
    assert record_key(binary) == float_key + "/binary"
    results = {float_key: dict(record, **{"recall@1": 2.0}), record_key(binary): binary}
    assert latest_record(results, "university", "Drone->Satellite")["recall@1"] == 2.0  # newer binary ignored
    assert latest_record(results, "university", "Drone->Satellite", descriptor="binary")["recall@1"] == 1.0
