"""The fused engine: its C++ tail against float64 formulas on every instruction-set path, each
BNext unit against the exact engine on every BNext size, whole features and retrieval metrics
against the float network, and the fallback without a compiler.

The fused engine rounds differently from the float network, so these tests state tolerances
(docs/engine_speed.md measures the differences on more data); the exact engine's bit-for-bit
tests are in test_bitpacked.py.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from datasets.retrieval import build_test_sets
from evaluation.features import extract_features
from evaluation.metrics import evaluate_retrieval
from models import bitpacked, build_model
from models.bitpacked import engines
from models.bitpacked.fused import FusedUnit
from models.bitpacked.network import PackedUnit
from models.bnext import BNEXT_CHANNELS, BNext
from tests.test_bitpacked import STUDENT, isa, needs_engine, ops, randomize  # noqa: F401 (isa is a fixture)

# A unit's output may differ from the exact engine's by this much, relative to its largest value:
# both see the same packed bits, so only the tail's rounding differs (sums, folded BN2, FMAs).
UNIT_TOLERANCE = 1e-5
# Whole networks: a rare flipped sign moves later maps further.
FEATURE_TOLERANCE = 1e-2


def reference_tail(z, x, gate, scale, shift, slope, elm, pooled):
    """The tail's formula in float64."""
    z, x, gate, scale, shift = (t.double() for t in (z, x, gate, scale, shift))
    per_channel = lambda v: v[None, :, None, None]  # noqa: E731
    r = torch.where(x < 0, x * per_channel(slope.double()), x) if slope.numel() else x
    r = F.avg_pool2d(r, 2) if pooled else r
    branch = z * r if elm else z
    return branch * (gate[:, :, None, None] * per_channel(scale)) + per_channel(shift) + r


@needs_engine
@pytest.mark.parametrize("channels,size,elm,with_slope,pooled", [
    (71, 5, True, True, False), (64, 17, False, False, False), (1024, 1, True, False, False),
    (48, 33, False, True, False), (8, 12, True, True, True), (130, 3, False, False, True), (16, 1, True, True, True)])
def test_tail_matches_its_formula_and_packs_its_output(isa, channels, size, elm, with_slope, pooled):
    """Planes shorter than, equal to and longer than a vector and a pooling run, widths off a 64-bit word."""
    g = torch.Generator().manual_seed(channels + size)
    z = torch.randn(2, channels, size, size, generator=g)
    x = torch.randn(2, channels, 2 * size if pooled else size, 2 * size if pooled else size, generator=g)
    gate, scale, shift, slope, move = (torch.randn(*shape, generator=g) for shape in
                                       ((2, channels), (channels,), (channels,), (channels,), (channels,)))
    slope = slope if with_slope else torch.empty(0)
    out = torch.full((2, channels, size, size), float("nan"))
    bits = ops.tail(z, x, gate, scale, shift, slope, elm, pooled, out, 0, move)
    expected = reference_tail(z, x, gate, scale, shift, slope, elm, pooled)
    assert torch.allclose(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(bits, ops.pack(out, move))


@needs_engine
def test_tail_writes_its_channel_slice_only(isa):
    z, res, gate = torch.randn(1, 8, 3, 3), torch.randn(1, 8, 3, 3), torch.rand(1, 8)
    one, zero = torch.ones(8), torch.zeros(8)
    out = torch.zeros(1, 16, 3, 3)
    bits = ops.tail(z, res, gate, one, zero, torch.empty(0), False, False, out, 8, torch.empty(0))
    assert bits.numel() == 0 and torch.equal(out[:, :8], torch.zeros(1, 8, 3, 3))
    assert torch.allclose(out[:, 8:], z * gate[:, :, None, None] + res, atol=1e-6)
    with pytest.raises(RuntimeError, match="channels"):
        ops.tail(z, res, gate, one, zero, torch.empty(0), False, False, out, 9, torch.empty(0))


@needs_engine
@pytest.mark.parametrize("x_size,z_size", [(8, 4), (5, 5), (1, 1), (40, 20)])
def test_tail_means_are_the_se_gate_input(isa, x_size, z_size):
    g = torch.Generator().manual_seed(x_size)
    x, z = torch.randn(2, 40, x_size, x_size, generator=g), torch.randn(2, 40, z_size, z_size, generator=g)
    mix = torch.rand(40, generator=g)
    pooled = F.avg_pool2d(x.double(), 2) if x_size == 2 * z_size else x.double()
    expected = (mix[:, None, None] * pooled + (1 - mix[:, None, None]) * z.double()).mean((2, 3))
    assert torch.allclose(ops.tail_means(x, z, mix, 1 - mix).double(), expected, rtol=1e-5, atol=1e-6)


def unit_kinds(size):
    """One unit of each kind BNext ``size`` has: (block index, unit name), distinct by width,
    kernel, stride and ELM."""
    backbone = BNext(size, num_classes=0)
    kinds = {}
    for index, block in enumerate(backbone.feature[1:], start=1):
        for name in ("Attention", "FFN", "FFN_1"):
            unit = getattr(block, name, None)
            if unit is not None:
                key = (unit.move.bias.numel(), unit.binary_conv.kernel_size, unit.binary_conv.stride, type(unit))
                kinds.setdefault(key, (index, name))
    return sorted(kinds.values())


@needs_engine
@pytest.mark.parametrize("size", list(BNEXT_CHANNELS))
def test_every_unit_kind_is_within_tolerance_of_the_exact_engine(size):
    """Same input, same packed bits: the fused tail against the exact engine's unit, on every size."""
    backbone = BNext(size, num_classes=0, temperature=0.0)
    g = torch.Generator().manual_seed(7)
    for index, name in unit_kinds(size):
        unit = randomize(getattr(backbone.feature[index], name), seed=index)
        channels, stride = unit.move.bias.numel(), unit.binary_conv.stride[0]
        x = torch.randn(2, channels, 4 * stride, 4 * stride, generator=g)
        with torch.inference_mode():
            exact = PackedUnit(ops, unit)([x])[0]
            fused_unit = FusedUnit(ops, unit)
            fused, _ = fused_unit(x, ops.pack(x, fused_unit.move))
        scale = exact.abs().max()
        assert torch.equal(exact, unit(x)), (size, index, name)  # the reference is the float unit itself
        assert (fused - exact).abs().max() <= UNIT_TOLERANCE * scale, (size, index, name)


def features(model, images):
    with torch.inference_mode():
        return model(images)


@needs_engine
@pytest.mark.parametrize("binarizer", ["bnext", "recu"])
def test_fused_features_are_close_to_the_float_network(binarizer):
    model = randomize(build_model(STUDENT, 7, binarizer=binarizer), seed=3)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    expected = features(model, images)
    fused = bitpacked.convert(model, engine="fused")
    assert isinstance(fused.backbone, bitpacked.FusedBNext)
    for isa_name in bitpacked.supported_isas():
        bitpacked.set_isa(isa_name)
        try:
            got = features(fused, images)
        finally:
            bitpacked.set_isa()
        assert (got - expected).abs().max() <= FEATURE_TOLERANCE * expected.abs().max(), isa_name
    fused.backbone.micro_batch = 3
    assert (features(fused, images) - expected).abs().max() <= FEATURE_TOLERANCE * expected.abs().max()


@needs_engine
def test_fused_retrieval_metrics_agree_with_the_float_network(university_root):
    """Recall@1 and AP of both directions on the tiny synthetic split, within one query."""
    model = randomize(build_model(STUDENT, 6), seed=5)
    fused = bitpacked.convert(model, engine="fused")
    for mode in (1, 2):
        query_set, gallery_set = build_test_sets(university_root / "test", "university", None, mode, 64, 64)
        metrics = []
        for network in (model, fused):
            query_f, query_l = extract_features(network, DataLoader(query_set, batch_size=8), "cpu")
            gallery_f, gallery_l = extract_features(network, DataLoader(gallery_set, batch_size=8), "cpu")
            metrics.append(evaluate_retrieval(query_f, query_l, gallery_f, gallery_l))
        one_query = 100 / len(query_set)
        for name in ("recall@1", "ap"):
            assert abs(metrics[0][name] - metrics[1][name]) <= one_query, (mode, name, metrics)


@needs_engine
def test_fused_engine_is_inference_only_and_checks_its_arguments():
    model = randomize(BNext("tiny", num_classes=0, temperature=0.0))
    fused = bitpacked.convert(model, engine="fused")
    with pytest.raises(RuntimeError, match="inference-only"):
        fused.train()
    with pytest.raises(ValueError, match="engine must be one of"):
        bitpacked.convert(model, engine="int8")
    with pytest.raises(ValueError, match="micro_batch"):
        bitpacked.convert(model, engine="fused", micro_batch=0)


def test_without_the_engine_fused_gives_the_float_network(monkeypatch):
    monkeypatch.setattr(engines, "load_ops", lambda: None)
    model = randomize(BNext("tiny", num_classes=0, temperature=0.0))
    assert bitpacked.convert(model, engine="fused") is model
