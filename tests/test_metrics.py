"""Retrieval metrics: the vectorized implementation against the literal reference and hand cases."""
import numpy as np
import pytest
import torch

from evaluation.metrics import (METRIC_NAMES, evaluate_retrieval, evaluate_retrieval_loop, format_metrics,
                           retrieval_ranks, top1_percent_index)


def one_dim_gallery(scores):
    """1-d features: with the query feature [1], each gallery item's score is its own value."""
    return np.ones((1, 1), np.float32), np.asarray(scores, np.float32)[:, None]


def single_query(gallery_scores, gallery_labels, query_label=1):
    query, gallery = one_dim_gallery(gallery_scores)
    return evaluate_retrieval(query, [query_label], gallery, gallery_labels)


def assert_same_metrics(a, b):
    assert set(a) == set(b) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert a[name] == pytest.approx(b[name], abs=1e-9), name


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_with_ties_junk_and_unmatched_queries(seed):
    rng = np.random.default_rng(seed)
    num_gallery, num_query = int(rng.integers(20, 120)), int(rng.integers(5, 60))
    dim = int(rng.integers(2, 6))
    # Features on a coarse integer grid: many exactly equal scores, so the tie rule matters.
    gallery = rng.integers(-2, 3, size=(num_gallery, dim)).astype(np.float32)
    query = rng.integers(-2, 3, size=(num_query, dim)).astype(np.float32)
    gallery_labels = rng.integers(-1, 8, size=num_gallery)  # -1 = junk
    query_labels = rng.integers(-1, 11, size=num_query)  # labels 8..10 and -1 have no good item
    assert (~np.isin(query_labels, gallery_labels[gallery_labels >= 0])).any()
    assert (gallery_labels == -1).any()

    reference = evaluate_retrieval_loop(query, query_labels, gallery, gallery_labels)
    assert 0 < reference["ap"] < 100
    assert_same_metrics(evaluate_retrieval(query, query_labels, gallery, gallery_labels), reference)
    tensors = [torch.from_numpy(a) for a in (query, query_labels, gallery, gallery_labels)]
    assert_same_metrics(evaluate_retrieval(*tensors, chunk_size=7), reference)


def test_matches_reference_on_continuous_features_with_many_goods():
    rng = np.random.default_rng(0)
    gallery_labels = np.repeat(np.arange(30), 17)
    gallery = rng.normal(size=(len(gallery_labels), 16)).astype(np.float32)
    query_labels = np.arange(40) % 31
    query = (gallery[np.searchsorted(gallery_labels, query_labels % 30)]
             + rng.normal(scale=2.0, size=(40, 16))).astype(np.float32)
    assert_same_metrics(evaluate_retrieval(query, query_labels, gallery, gallery_labels),
                        evaluate_retrieval_loop(query, query_labels, gallery, gallery_labels))


@pytest.mark.parametrize("rank", [0, 1, 4, 5, 9, 10, 30])
def test_single_match_at_rank(rank):
    scores = np.arange(40, 0, -1)  # item j is at rank j
    labels = np.zeros(40, np.int64)
    labels[rank] = 1
    metrics = single_query(scores, labels)
    assert metrics["ap"] == pytest.approx(100.0 if rank == 0 else 100.0 / (2 * (rank + 1)))
    for k in (1, 5, 10):
        assert metrics[f"recall@{k}"] == (100.0 if rank < k else 0.0)
    # With 40 items round(0.4) = 0: Recall@top1 is Recall@1.
    assert metrics["recall@top1"] == metrics["recall@1"]


def test_two_matches_at_ranks_0_and_2():
    labels = [1, 0, 1, 0, 0]
    metrics = single_query([5, 4, 3, 2, 1], labels)
    # i=0, r=0: o=1, p=1; i=1, r=2: o=1/2, p=2/3.  AP = (2 + 7/6) / 4 = 19/24.
    assert metrics["ap"] == pytest.approx(100.0 * 19 / 24)
    assert metrics["recall@1"] == 100.0


def test_junk_before_a_good_item_shifts_its_rank():
    # Raw order: neg, junk, junk, good -> rank 1 once the junk is removed: AP = 1 / (2 * 2).
    metrics = single_query([4, 3, 2, 1], [0, -1, -1, 1])
    assert metrics["ap"] == pytest.approx(25.0)
    assert (metrics["recall@1"], metrics["recall@5"]) == (0.0, 100.0)
    query, gallery = one_dim_gallery([4, 3, 2, 1])
    first_rank, _ = retrieval_ranks(query, [1], gallery, [0, -1, -1, 1])
    assert first_rank.tolist() == [1]


def test_equal_scores_keep_gallery_order():
    # All scores tie: ranks are gallery positions (junk removed). Goods at positions 1 and 4 with a
    # junk item at position 2 rank 1 and 3.
    metrics = single_query([7] * 6, [0, 1, -1, 0, 1, 0])
    assert metrics["ap"] == pytest.approx(100.0 * ((1 / 2 + 0) / 2 + (1 / 3 + 1 / 2) / 2) / 2)
    assert metrics["recall@1"] == 0.0 and metrics["recall@5"] == 100.0


def test_query_without_match_counts_in_denominator():
    query = np.array([[1.0], [1.0]], np.float32)
    gallery = np.array([[2.0], [1.0]], np.float32)
    metrics = evaluate_retrieval(query, [5, 9], gallery, [5, 6])
    assert metrics == {"recall@1": 50.0, "recall@5": 50.0, "recall@10": 50.0, "recall@top1": 50.0, "ap": 50.0}
    first_rank, ap = retrieval_ranks(query, [5, 9], gallery, [5, 6])
    assert first_rank.tolist() == [0, -1] and ap.tolist() == [1.0, 0.0]


def test_recall_top1_uses_one_percent_of_the_full_gallery():
    assert top1_percent_index(951) == 10 and top1_percent_index(51355) == 514
    # 951 items, one of them junk: the good item at junk-removed rank 10 is inside the top 1%.
    scores = np.arange(951, 0, -1)
    labels = np.zeros(951, np.int64)
    labels[3], labels[11] = -1, 1
    metrics = single_query(scores, labels)
    assert (metrics["recall@10"], metrics["recall@top1"]) == (0.0, 100.0)
    assert_same_metrics(metrics, evaluate_retrieval_loop([[1.0]], [1], scores[:, None], labels))


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 64])
def test_chunk_size_does_not_change_results(chunk_size):
    rng = np.random.default_rng(3)
    gallery = rng.integers(-3, 4, size=(50, 4)).astype(np.float32)
    query = rng.integers(-3, 4, size=(23, 4)).astype(np.float32)
    gallery_labels, query_labels = rng.integers(-1, 6, 50), rng.integers(0, 8, 23)
    expected = retrieval_ranks(query, query_labels, gallery, gallery_labels)
    first_rank, ap = retrieval_ranks(query, query_labels, gallery, gallery_labels, chunk_size=chunk_size)
    assert torch.equal(first_rank, expected[0]) and torch.equal(ap, expected[1])


def test_rejects_empty_inputs():
    with pytest.raises(ValueError):
        evaluate_retrieval(np.zeros((0, 3), np.float32), [], np.ones((2, 3), np.float32), [0, 1])


def test_format_metrics_is_the_familiar_line():
    line = format_metrics({"recall@1": 89.644, "recall@5": 95.0, "recall@10": 96.5, "recall@top1": 97.0,
                           "ap": 91.3219})
    assert line == "Recall@1:89.64 Recall@5:95.00 Recall@10:96.50 Recall@top1:97.00 AP:91.32"


def random_retrieval(seed, num_gallery, num_query, dim, levels, junk_share):
    """Integer-grid features (exact scores, many ties), junk, classes of very different sizes and
    queries without any good item."""
    rng = np.random.default_rng(seed)
    gallery = rng.integers(-levels, levels + 1, size=(num_gallery, dim)).astype(np.float32)
    query = rng.integers(-levels, levels + 1, size=(num_query, dim)).astype(np.float32)
    sizes = np.minimum(rng.zipf(1.6, size=num_gallery), 300)  # a few large classes, many small ones
    gallery_labels = np.repeat(np.arange(num_gallery), sizes)[:num_gallery]
    gallery_labels = rng.permutation(gallery_labels)
    gallery_labels[rng.random(num_gallery) < junk_share] = -1
    real = np.unique(gallery_labels[gallery_labels >= 0])
    query_labels = np.where(rng.random(num_query) < 0.8, rng.choice(real, num_query), num_gallery + 1)
    query_labels[:3] = -1
    return query, query_labels, gallery, gallery_labels


@pytest.mark.parametrize("seed, num_gallery, num_query, dim, levels, junk_share", [
    (0, 2000, 100, 3, 1, 0.1),  # a few dozen distinct scores: nearly everything ties
    (1, 3000, 80, 4, 2, 0.3),
    (2, 2500, 120, 6, 3, 0.02),
    (3, 1500, 60, 2, 5, 0.5),
    (4, 4000, 50, 8, 7, 0.0),  # no junk at all
])
def test_identical_to_reference_at_larger_sizes(seed, num_gallery, num_query, dim, levels, junk_share):
    query, query_labels, gallery, gallery_labels = random_retrieval(seed, num_gallery, num_query, dim, levels,
                                                                    junk_share)
    assert (~np.isin(query_labels, gallery_labels[gallery_labels >= 0])).any()
    assert np.bincount(gallery_labels[gallery_labels >= 0]).max() >= 20  # many good items for some
    reference = evaluate_retrieval_loop(query, query_labels, gallery, gallery_labels)
    assert 0 < reference["ap"] < 100
    # Bit for bit, not merely close: same ranks, same arithmetic, same summation order.
    assert evaluate_retrieval(query, query_labels, gallery, gallery_labels) == reference
    assert evaluate_retrieval(query, query_labels, gallery, gallery_labels, chunk_size=37) == reference


def test_identical_to_reference_with_near_ties_and_non_finite_scores():
    rng = np.random.default_rng(5)
    # 1-d features with the query feature [1]: scores are the gallery values, on a grid of float32
    # neighbours (near ties everywhere), plus +-inf and NaN, which NumPy's sort puts last.
    values = 1000.0 + rng.integers(-40, 40, size=3000) * np.float32(2.0 ** -13)
    values[rng.random(3000) < 0.02] = np.inf
    values[rng.random(3000) < 0.02] = -np.inf
    values[rng.random(3000) < 0.02] = np.nan
    gallery = values.astype(np.float32)[:, None]
    gallery_labels = rng.integers(-1, 12, size=3000)
    query_labels = np.arange(-1, 14)
    query = np.ones((len(query_labels), 1), np.float32)
    reference = evaluate_retrieval_loop(query, query_labels, gallery, gallery_labels)
    assert evaluate_retrieval(query, query_labels, gallery, gallery_labels) == reference


def test_all_scores_equal_rank_in_gallery_order():
    labels = np.array([3, -1, 1, 2, 1, -1, 3, 1, 0] * 50)
    query, gallery = np.ones((4, 1), np.float32), np.full((len(labels), 1), 2.0, np.float32)
    reference = evaluate_retrieval_loop(query, [0, 1, 2, 3], gallery, labels)
    assert evaluate_retrieval(query, [0, 1, 2, 3], gallery, labels) == reference
    first_rank, _ = retrieval_ranks(query, [0, 1, 2, 3], gallery, labels)
    assert first_rank.tolist() == [6, 1, 2, 0]  # junk removed: positions 0, 2, 3, 4, ... shift
