"""Bit-packed engine: exact binary convolutions on every instruction-set path, whole-network
features bit for bit equal to the float path's, the ISA switch, and the fallback without a compiler.

The C++ ops compile on first use (about 15 s on 2 cores), once per machine; later runs load the cache.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models import bitpacked, build_model
from models.bitpacked import build, engines, network
from models.bitpacked.build import ISA_VARIABLE, load_ops
from models.binary import binary_convs
from models.bnext import BNext
from runs.packed import export_packed, load_packed
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
STUDENT = "bicrossnet_bnext_tiny"
NUM_CLASSES = 7
SIZE = 64
META = {"h": SIZE, "w": SIZE}

ops = load_ops()
needs_engine = pytest.mark.skipif(ops is None, reason="the bitpacked engine could not be built here")
ISAS = ("avx512", "avx2", "neon", "portable")


def signs(x):
    return torch.where(x >= 0, 1.0, -1.0)


@pytest.fixture(params=ISAS)
def isa(request):
    """Each instruction-set path in turn (skipped where the CPU lacks it); the best one afterwards."""
    if request.param not in bitpacked.supported_isas():
        pytest.skip(f"this CPU cannot run {request.param}")
    bitpacked.set_isa(request.param)
    yield request.param
    bitpacked.set_isa()


def bnext_conv_shapes(size):
    """(in channels, kernel, stride) of every binary conv of BNext ``size``."""
    return sorted({(m.in_channels, m.kernel_size[0], m.stride[0]) for m in binary_convs(BNext(size, num_classes=0))})


TINY_SHAPES = bnext_conv_shapes("tiny")
# Widths only S/M/L have (48, 96, 192 are not multiples of 64), and the widest layers.
SAMPLED_SHAPES = [(48, 3, 1), (96, 3, 2), (96, 1, 1), (192, 3, 1), (384, 3, 2), (768, 1, 1), (1536, 3, 1),
                  (2048, 3, 1), (2048, 1, 1)]


def packed_dot(x, bias, weight, stride):
    """The conv kernel's integer result: unit pre-scale and scale, zero shift, unit PReLU slope."""
    packed, pop = ops.pack_weight(weight)
    out_channels = weight.shape[0]
    one, zero = torch.ones(out_channels), torch.zeros(out_channels)
    return ops.conv(ops.pack(x, bias), packed, pop, one, one, zero, one, x.shape[1], weight.shape[2], stride)


def check_conv(channels, kernel, stride, size, out_channels=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    out_channels = out_channels or channels
    x = torch.randn(2, channels, size, size, generator=g).round_(decimals=1)  # exact zeros: sign(0) = +1
    bias = (torch.randn(channels, generator=g) * 0.1).round_(decimals=1)
    weight = signs(torch.randn(out_channels, channels, kernel, kernel, generator=g))
    expected = F.conv2d(signs(x + bias[:, None, None]), weight, stride=stride, padding=kernel // 2)
    got = packed_dot(x, bias, weight, stride)
    assert got.shape == expected.shape and got.is_contiguous()
    assert torch.equal(got, expected), f"max difference {(got - expected).abs().max()}"


def test_bnext_tiny_has_the_expected_binary_conv_shapes():
    """1x1 units at every width, 3x3 units of stride 2 where the width doubles (not in block 1)."""
    assert TINY_SHAPES == sorted([(c, 1, 1) for c in (32, 64, 128, 256, 512, 1024)]
                                 + [(c, 3, 1) for c in (32, 128, 256, 512, 1024)]
                                 + [(c, 3, 2) for c in (64, 128, 256, 512)])


@needs_engine
@pytest.mark.parametrize("channels,kernel,stride", TINY_SHAPES)
def test_bnext_tiny_convs_are_exact(isa, channels, kernel, stride):
    """Border and interior pixels, tiles that span two images and a short last tile."""
    check_conv(channels, kernel, stride, size=5 if stride == 1 else 6)


@needs_engine
@pytest.mark.parametrize("channels,kernel,stride", SAMPLED_SHAPES)
def test_sampled_small_middle_large_convs_are_exact(channels, kernel, stride):
    check_conv(channels, kernel, stride, size=4, out_channels=min(channels, 256))


@needs_engine
@pytest.mark.parametrize("channels,out_channels,kernel,stride,size",
                         [(100, 20, 3, 1, 7), (3, 5, 3, 2, 7), (64, 13, 5, 1, 6), (130, 8, 1, 1, 1), (32, 16, 3, 1, 1)])
def test_odd_widths_kernels_and_maps_are_exact(isa, channels, out_channels, kernel, stride, size):
    check_conv(channels, kernel, stride, size, out_channels)


@needs_engine
def test_thread_count_does_not_change_the_result():
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            g = torch.Generator().manual_seed(3)
            x = torch.randn(3, 256, 9, 9, generator=g)
            results.append(packed_dot(x, torch.zeros(256), signs(torch.randn(256, 256, 3, 3, generator=g)), 1))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(*results)


@needs_engine
@pytest.mark.parametrize("size", [1, 5, 17])
def test_pack_sets_bit_c_of_word_c_over_64_for_nonnegative_x_plus_bias(isa, size):
    """Ties (x + bias == 0, -0.0) give +1; plane sizes below, at and past a 16-pixel block."""
    values = torch.tensor([0.5, -0.5, 0.0, -0.0, -1.0, 2.0] + [-1.0] * 64 + [1.0])
    bias = torch.zeros(71)
    bias[4] = 1.0  # -1 + 1 = 0 -> +1
    x = torch.randn(2, 71, size, size)
    x[1, :, -1, -1] = values
    bits = ops.pack(x, bias)
    assert bits.shape == (2, size, size, 2) and bits.dtype == torch.int64
    assert bits[1, -1, -1].tolist() == [0b111101, 1 << (70 - 64)]
    signs_back = torch.stack([(bits[..., c // 64] >> (c % 64)) & 1 for c in range(71)], dim=1)
    assert torch.equal(signs_back.bool(), x + bias[:, None, None] >= 0)


def test_avg_pool2_is_avg_pool2d_bit_for_bit():
    x = torch.randn(2, 8, 10, 6) * 100
    assert torch.equal(network.avg_pool2(x), torch.nn.AvgPool2d(2)(x))
    assert torch.equal(network.avg_pool2(x[:, :, :9]), torch.nn.AvgPool2d(2)(x[:, :, :9]))


def randomize(model, seed=0):
    """Random BN statistics, affine terms, PReLU slopes, biases and binary weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not name.endswith(("temperature", "tau")):
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5 if name.endswith("running_var")
                             else torch.randn(tensor.shape, generator=g) * 0.2)
    return model.eval()


def features(model, seed=1):
    with torch.inference_mode():
        return model(torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)))


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A BiCrossNet-T student with random weights, packed: (path, float features, bitpacked model)."""
    model = randomize(build_model(STUDENT, NUM_CLASSES))
    path = tmp_path_factory.mktemp("packed") / "student.pt"
    export_packed(model, STUDENT, {}, NUM_CLASSES, META, path)
    fast = load_packed(path, engine="bitpacked")[0] if ops is not None else None
    return path, features(model), fast


@pytest.mark.slow
@needs_engine
def test_bitpacked_features_equal_the_float_path(student):
    """Bit for bit, not merely within 1e-4: one rounding difference before a sign can flip it, and
    the flip spreads (docs/method.md §9)."""
    path, expected, fast = student
    assert isinstance(fast.backbone, bitpacked.PackedBNext) and not fast.training
    got = features(fast)
    assert got.shape == expected.shape == (3, 512, 3)
    assert torch.equal(got, expected), f"max difference {(got - expected).abs().max()}"
    assert torch.equal(features(fast, seed=5), features(load_packed(path)[0], seed=5))


@pytest.mark.slow
@needs_engine
def test_recu_student_features_equal_the_float_path():
    model = randomize(build_model(STUDENT, NUM_CLASSES, binarizer="recu"), seed=2)
    assert torch.equal(features(bitpacked.convert(model)), features(model))


@pytest.mark.slow
@needs_engine
def test_every_isa_and_micro_batch_gives_the_same_features(student):
    fast = student[2]
    reference = features(fast)
    try:
        for isa in bitpacked.supported_isas():
            bitpacked.set_isa(isa)
            assert torch.equal(features(fast), reference), isa
        fast.backbone.micro_batch = 1
        assert torch.equal(features(fast), reference)
    finally:
        bitpacked.set_isa()
        fast.backbone.micro_batch = bitpacked.DEFAULT_MICRO_BATCH


@pytest.mark.slow
@needs_engine
def test_bitpacked_engine_is_inference_only(student):
    with pytest.raises(RuntimeError, match="inference-only"):
        student[2].train()


@pytest.mark.slow
@needs_engine
def test_engine_refusals(tmp_path, student, monkeypatch):
    with pytest.raises(ValueError, match="engine must be one of"):
        load_packed(student[0], engine="int8")
    with pytest.raises(ValueError, match="runs on the CPU"):
        load_packed(student[0], map_location="cuda", engine="bitpacked")
    with pytest.raises(ValueError, match="runs BNext students"):
        bitpacked.convert(build_model("mccg_convnext_atto", NUM_CLASSES))
    with pytest.raises(ValueError, match="not available here"):
        bitpacked.set_isa("sse9")
    monkeypatch.setenv(ISA_VARIABLE, "sse9")
    with pytest.raises(UserError, match=f"{ISA_VARIABLE}=sse9"):
        build._apply_isa_variable(ops)


def run_python(code, **env):
    """Run ``code`` in a fresh interpreter at the repository root with extra environment variables."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
@needs_engine
def test_isa_variable_forces_a_path_at_load():
    forced = run_python("from models import bitpacked; print(bitpacked.active_isa())", **{ISA_VARIABLE: "portable"})
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.split() == ["portable"]


@pytest.mark.slow
def test_missing_compiler_gives_one_warning_line(tmp_path):
    code = "from models.bitpacked.build import load_ops; assert load_ops() is None and load_ops() is None"
    result = run_python(code, CXX="/nonexistent/g++", TORCH_EXTENSIONS_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2 and "bitpacked engine unavailable, using the float path" in lines[0], result.stderr
    assert "/nonexistent/g++: not found" in lines[0]  # the line that says why, not ninja's command
    assert lines[1:] == [] or not any(word in lines[1].lower() for word in ("warn", "error")), result.stderr


@pytest.mark.slow
def test_without_the_engine_load_packed_gives_the_float_network(student, monkeypatch):
    monkeypatch.setattr(engines, "load_ops", lambda: None)
    model, meta = load_packed(student[0], engine="bitpacked")
    assert isinstance(model.backbone, BNext) and meta["model"] == STUDENT
    assert torch.equal(features(model), student[1])


@pytest.mark.slow
@needs_engine
def test_bare_bnext_logits_equal_the_float_path():
    model = randomize(BNext("small", num_classes=10, temperature=0.0), seed=4)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(bitpacked.convert(model, micro_batch=2)(x), model(x))
