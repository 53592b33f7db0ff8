import math
import re

import pytest
import torch
import torch.nn.functional as F

from losses import KD_MODES, BiCrossNetLoss, cross_view_triplet_loss, kl_distillation, mse_distillation


def _reference_triplet(feat_a, feat_b, labels_a, labels_b, margin):
    """Loop over anchors of both views; mean of the hinge over anchors having a positive and a negative."""
    feat_a = [v / v.norm() for v in feat_a]
    feat_b = [v / v.norm() for v in feat_b]
    hinges = []
    for anchors, anchor_labels, others, other_labels in (
        (feat_a, labels_a, feat_b, labels_b),
        (feat_b, labels_b, feat_a, labels_a),
    ):
        for x, y in zip(anchors, anchor_labels):
            pos = [(x - o).norm().item() for o, l in zip(others, other_labels) if l == y]
            neg = [(x - o).norm().item() for o, l in zip(others, other_labels) if l != y]
            if pos and neg:
                hinges.append(max(0.0, max(pos) - min(neg) + margin))
    return sum(hinges) / len(hinges)


@pytest.mark.parametrize("seed", range(3))
def test_triplet_matches_anchor_loops(seed):
    g = torch.Generator().manual_seed(seed)
    feat_a, feat_b = torch.randn(6, 5, generator=g), torch.randn(7, 5, generator=g)
    # repeated labels make the hardest positive a real choice; classes 4 and 5 have no cross-view positive
    labels_a = torch.tensor([0, 1, 2, 3, 0, 4])
    labels_b = torch.tensor([0, 1, 1, 2, 3, 5, 0])
    for margin in (0.3, 1.5):
        expected = _reference_triplet(feat_a, feat_b, labels_a, labels_b, margin)
        got = cross_view_triplet_loss(feat_a, feat_b, labels_a, labels_b, margin)
        assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_triplet_mines_across_views_only():
    # Same-view pairs are far closer than any cross-view pair: a loss mining inside a view would
    # pick them; the cross-view loss must ignore them (only d(a_i, b_j) matter).
    feat_a = torch.tensor([[1.0, 0.0], [1.0, 0.01]])
    feat_b = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1])
    d = torch.cdist(F.normalize(feat_a), F.normalize(feat_b))
    # anchors a_i: positive b_i, negative b_{1-i}; anchors b_j: positive a_j, negative a_{1-j}
    hinges = [F.relu(d[0, 0] - d[0, 1] + 0.3), F.relu(d[1, 1] - d[1, 0] + 0.3),
              F.relu(d[0, 0] - d[1, 0] + 0.3), F.relu(d[1, 1] - d[0, 1] + 0.3)]
    expected = torch.stack(hinges).mean()
    assert cross_view_triplet_loss(feat_a, feat_b, labels, labels).item() == pytest.approx(expected.item())


def test_triplet_is_scale_invariant_and_zero_when_views_separate_classes():
    labels = torch.arange(3)
    feat = torch.eye(3)
    assert cross_view_triplet_loss(feat, 5 * feat, labels, labels).item() == 0.0  # d_ap 0, d_an √2 > 0.3
    assert cross_view_triplet_loss(feat, feat, labels, labels, margin=2.0).item() == pytest.approx(2 - math.sqrt(2))


def test_triplet_single_class_batch_is_zero_and_differentiable():
    feat_a = torch.randn(4, 8, requires_grad=True)
    feat_b = torch.randn(4, 8, requires_grad=True)
    labels = torch.zeros(4, dtype=torch.long)
    loss = cross_view_triplet_loss(feat_a, feat_b, labels, labels)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(feat_a.grad, torch.zeros_like(feat_a))


def test_triplet_gradient_is_finite_for_identical_features():
    feat = torch.randn(4, 8)
    feat_a = feat.clone().requires_grad_()
    feat_b = feat.clone().requires_grad_()
    labels = torch.arange(4)
    cross_view_triplet_loss(feat_a, feat_b, labels, labels, margin=2.0).backward()
    assert torch.isfinite(feat_a.grad).all() and feat_a.grad.abs().sum() > 0


def _softmax(x):
    e = torch.exp(x - x.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def test_kl_matches_explicit_formula_and_t2_scaling():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    t = [torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    for temp in (1.0, 4.0):
        per_classifier = []
        for si, ti in zip(s, t):
            p, q = _softmax(ti / temp), _softmax(si / temp)
            per_classifier.append((p * (p.log() - q.log())).sum() / si.shape[0])
        expected = temp ** 2 * sum(per_classifier) / len(per_classifier)
        assert kl_distillation(s, t, temp).item() == pytest.approx(expected.item(), rel=1e-10)
    # A uniform shift of the logits is a no-op for softmax: KL at T is T² times KL of logits/T at T=1.
    scaled = kl_distillation([x / 4 for x in s], [x / 4 for x in t], 1.0)
    assert kl_distillation(s, t, 4.0).item() == pytest.approx(16 * scaled.item(), rel=1e-10)


def test_kl_zero_for_equal_logits_and_positive_otherwise():
    x = [torch.randn(5, 7), torch.randn(5, 7)]
    assert kl_distillation(x, [v.clone() for v in x], 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_distillation(x, [v.flip(1) for v in x], 4.0).item() > 1e-3


def test_mse_distillation_matches_direct_computation():
    g = torch.Generator().manual_seed(1)
    sl, tl = ([torch.randn(3, 5, generator=g) for _ in range(3)] for _ in range(2))
    sf, tf = ([torch.randn(3, 8, generator=g) for _ in range(3)] for _ in range(2))
    logit_mse = sum(((a - b) ** 2).mean() for a, b in zip(sl, tl)) / 3
    feat_mse = sum(((a - b) ** 2).mean() for a, b in zip(sf, tf)) / 3
    expected = (logit_mse + feat_mse) / 4
    assert mse_distillation(sl, tl, sf, tf).item() == pytest.approx(expected.item(), rel=1e-6)


def test_distillation_rejects_mismatched_classifier_counts():
    x = [torch.randn(2, 3)] * 3
    with pytest.raises(ValueError, match="classifiers"):
        kl_distillation(x, x[:2], 2.0)


def _view(g, batch=4, classes=5, dim=8, branches=3, requires_grad=False):
    logits = tuple(torch.randn(batch, classes, generator=g).requires_grad_(requires_grad) for _ in range(branches))
    feats = tuple(torch.randn(batch, dim, generator=g).requires_grad_(requires_grad) for _ in range(branches))
    return logits, feats


@pytest.mark.parametrize("kd_mode", ["kl", "mse"])
def test_objective_terms_and_total(kd_mode):
    g = torch.Generator().manual_seed(2)
    labels = torch.tensor([0, 1, 2, 3])
    sat, drone = _view(g, requires_grad=True), _view(g, requires_grad=True)
    t_sat, t_drone = _view(g, requires_grad=True), _view(g, requires_grad=True)
    criterion = BiCrossNetLoss(triplet_margin=0.3, kd_weight=2.0, kd_temperature=3.0, kd_mode=kd_mode)
    total, terms = criterion((sat, drone), labels, (t_sat, t_drone))

    ce = sum(sum(F.cross_entropy(l, labels) for l in view[0]) / 3 for view in (sat, drone))
    triplet = sum(cross_view_triplet_loss(s, d, labels, labels, 0.3) for s, d in zip(sat[1], drone[1])) / 3
    if kd_mode == "kl":
        kd = kl_distillation(sat[0], t_sat[0], 3.0) + kl_distillation(drone[0], t_drone[0], 3.0)
    else:
        kd = sum(mse_distillation(s[0], t[0], s[1], t[1]) for s, t in ((sat, t_sat), (drone, t_drone)))
    for name, value in (("ce", ce), ("triplet", triplet), ("kd", kd)):
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-6)
        assert not terms[name].requires_grad
    assert kd.item() > 0 and triplet.item() > 0
    assert total.item() == pytest.approx((ce + triplet + 2.0 * kd).item(), rel=1e-6)
    assert terms["total"].item() == pytest.approx(total.item())

    total.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in sat[0] + sat[1] + drone[0] + drone[1])
    assert all(x.grad is None for x in t_sat[0] + t_sat[1] + t_drone[0] + t_drone[1])


def test_objective_skips_disabled_terms():
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(4)
    sat, drone, teacher = _view(g), _view(g), _view(g)
    no_triplet = BiCrossNetLoss(triplet_margin=0.0, kd_weight=1.0)
    total, terms = no_triplet((sat, drone), labels)  # no teacher: no KD
    assert terms["triplet"].item() == 0.0 and terms["kd"].item() == 0.0
    assert total.item() == pytest.approx(terms["ce"].item())
    _, terms = BiCrossNetLoss(kd_weight=0.0)((sat, drone), labels, (teacher, teacher))
    assert terms["kd"].item() == 0.0
    with pytest.raises(ValueError, match="one output per student view"):
        no_triplet((sat, drone), labels, (teacher,))
    with pytest.raises(ValueError, match="at least 2 views"):
        no_triplet((sat,), labels)


def test_three_views_by_hand():
    # One classifier, two classes. Satellite and drone features agree; the street view swaps the
    # classes, so every satellite/drone anchor's street positive is sqrt(2) away and its negative 0.
    eye = torch.eye(2)
    logits = (torch.zeros(2, 2),)  # uniform: cross-entropy log 2 per view
    sat, drone, street = (logits, (eye,)), (logits, (eye.clone(),)), (logits, (eye.flip(0),))
    labels = torch.tensor([0, 1])
    total, terms = BiCrossNetLoss(triplet_margin=0.3, kd_weight=1.0)((sat, drone, street), labels,
                                                                      (sat, drone, street))
    assert terms["ce"].item() == pytest.approx(3 * math.log(2))
    # pairs: satellite-drone 0; satellite-street and drone-street sqrt(2) + 0.3 for every anchor
    assert terms["triplet"].item() == pytest.approx(2 * (math.sqrt(2) + 0.3) / 3, rel=1e-6)
    assert terms["kd"].item() == pytest.approx(0.0, abs=1e-7)  # the teacher says the same
    assert total.item() == pytest.approx(3 * math.log(2) + 2 * (math.sqrt(2) + 0.3) / 3, rel=1e-6)


def test_three_view_objective_adds_the_third_view_to_every_term():
    g = torch.Generator().manual_seed(5)
    labels = torch.tensor([0, 1, 2, 3])
    views, teachers = [_view(g) for _ in range(3)], [_view(g) for _ in range(3)]
    criterion = BiCrossNetLoss(triplet_margin=0.3, kd_weight=1.0)
    _, three = criterion(views, labels, teachers)
    _, pairs = zip(*(criterion([views[i], views[j]], labels, [teachers[i], teachers[j]])
                     for i, j in ((0, 1), (0, 2), (1, 2))))
    # Each view's CE and KD appears in two of the three pairs; the triplet is the mean over pairs.
    for name in ("ce", "kd"):
        assert three[name].item() == pytest.approx(sum(p[name].item() for p in pairs) / 2, rel=1e-6)
    assert three["triplet"].item() == pytest.approx(sum(p["triplet"].item() for p in pairs) / 3, rel=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"kd_mode": "l2"}, "kd_mode must be one of kl, mse, got 'l2'"),
    ({"kd_weight": -1.0}, "kd_weight must be >= 0, got -1.0"),
    ({"kd_temperature": 0.0}, "kd_temperature must be > 0 for kd_mode kl, got 0.0"),
])
def test_objective_rejects_bad_options_naming_the_parameter(kwargs, message):
    assert KD_MODES == ("kl", "mse")
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        BiCrossNetLoss(**kwargs)
    assert "--" not in str(err.value)
    BiCrossNetLoss(kd_mode="mse", kd_temperature=0.0)  # the temperature only matters to KL
