import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.binary import (ApproxSign, HardBinaryConv, HardSign, ReCUConv2d, apply_constraints_, binary_convs,
                           count_exact_binary)
from models import build_model
from models._helpers import load_weights_file, state_dict_mismatch
from models.bnext import (
    BNEXT_CHANNELS,
    BNext,
    ELMAttentionUnit,
    PlainUnit,
    bnext_large,
    bnext_middle,
    bnext_small,
    bnext_tiny,
    checkpoint_filter_fn,
)
from utils.errors import UserError

COMPAT = Path(__file__).resolve().parent / "fixtures" / "bnext_state_dict_keys.json"  # copy of shared/compat
SIZES = list(BNEXT_CHANNELS)


@pytest.fixture(scope="module")
def compat_keys():
    if not COMPAT.exists():
        pytest.fail(f"official BNext key list {COMPAT} is missing")
    return json.loads(COMPAT.read_text())["sizes"]


def meta_bnext(size, **kwargs):
    with torch.device("meta"):
        return BNext(size, **kwargs)


def expected_counts(ch, num_classes=1000):
    """(total, binary) parameters from the channel list, unit by unit."""
    def unit(c, k):
        binary = c * c * k * k
        se = c * (c // 8) + c // 8 + (c // 8) * c + c
        return binary, binary + se + 8 * c  # scale, move, 2 BN (weight+bias), 2 PReLU

    total = 27 * ch[0] + 3 * ch[0]  # stem conv, BN, unused PReLU
    binary = 0
    for cin, cout in zip(ch, ch[1:]):
        for k, n in ((3, 1), (1, 1 if cin == cout else 2)):
            b, t = unit(cin, k)
            binary, total = binary + n * b, total + n * t
    total += ch[-1] + ch[-1] * num_classes + num_classes
    return total, binary


@pytest.mark.parametrize("size", SIZES)
def test_parameter_counts_follow_the_channel_list(size):
    model = meta_bnext(size)
    total = sum(p.numel() for p in model.parameters())
    binary = sum(m.weight.numel() for m in binary_convs(model))
    assert (total, binary) == expected_counts(BNEXT_CHANNELS[size])
    assert model.num_features == BNEXT_CHANNELS[size][-1]


def test_bnext_tiny_published_parameter_count():
    model = meta_bnext("tiny")
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 30.86
    assert round(sum(m.weight.numel() for m in binary_convs(model)) / 1e6, 2) == 28.25


@pytest.mark.slow
@pytest.mark.parametrize("builder, size", zip([bnext_tiny, bnext_small, bnext_middle, bnext_large], SIZES))
def test_feature_map_is_one_32nd_of_the_input(builder, size):
    with torch.device("meta"):
        model = builder(num_classes=10)
        x = torch.zeros(2, 3, 224, 192)
    assert model.forward_features(x).shape == (2, BNEXT_CHANNELS[size][-1], 7, 6)
    assert model(x).shape == (2, 10)


@pytest.mark.slow
def test_tiny_runs_on_cpu_at_64():
    torch.manual_seed(0)
    model = BNext("tiny", num_classes=0).eval()
    widths, sides = [], []

    def record(module, args, out):
        widths.append(out.shape[1])
        sides.append(out.shape[-1])

    for block in model.feature:
        block.register_forward_hook(record)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model(x)
    assert feats.shape == (2, 1024, 2, 2)
    assert torch.allclose(pooled, feats.mean(dim=(2, 3)), atol=1e-5)  # no classifier
    # two passes (forward_features, forward); stem halves, block 1 keeps the size,
    # every later width change halves it
    assert widths == BNEXT_CHANNELS["tiny"] * 2
    assert sides == [32, 32, 16, 16, 8, 8, 4, 4, 4, 4, 4, 4, 2, 2] * 2


def test_units_and_strides_follow_the_block_rule():
    ch = BNEXT_CHANNELS["middle"]
    model = meta_bnext("middle")
    for i in range(1, len(ch)):
        unit = model.feature[i].Attention
        assert isinstance(unit, ELMAttentionUnit if i % 2 == 0 else PlainUnit)
        assert unit.binary_conv.stride == ((2, 2) if i > 1 and ch[i] != ch[i - 1] else (1, 1))
        assert unit.binary_conv.kernel_size == (3, 3)
        ffn = [model.feature[i].FFN] if ch[i] == ch[i - 1] else [model.feature[i].FFN_1, model.feature[i].FFN_2]
        assert all(type(u) is PlainUnit and u.binary_conv.kernel_size == (1, 1) for u in ffn)


def randomize_bn(module):
    """Random parameters (scale in [0, 1]) and BN statistics, so no formula term is an identity."""
    torch.manual_seed(4)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.rand_like(p) if name == "scale" else torch.randn_like(p) * 0.5)
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.normal_()
                bn.running_var.uniform_(0.5, 2)
    return module.eval()


@pytest.mark.parametrize("unit_cls, stride", [(ELMAttentionUnit, 2), (PlainUnit, 2), (PlainUnit, 1)])
def test_unit_matches_the_written_out_formula(unit_cls, stride):
    u = randomize_bn(unit_cls(16, 3, stride, temperature=0.0))
    x = torch.randn(2, 16, 8, 8)
    pool = (lambda t: F.avg_pool2d(t, 2)) if stride == 2 else (lambda t: t)
    signs = torch.where(x + u.move.bias >= 0, 1.0, -1.0)
    w = torch.where(u.binary_conv.weight >= 0, 1.0, -1.0)
    z = F.conv2d(signs, w, stride=stride, padding=1)
    z = F.batch_norm(z, u.norm1.running_mean, u.norm1.running_var, u.norm1.weight, u.norm1.bias, eps=1e-5)
    z = F.prelu(z, u.activation2.weight)
    s = u.scale
    mix = s * pool(x) + (1 - s) * z
    gate = torch.sigmoid(u.se.se[3](F.relu(u.se.se[1](mix.mean(dim=(2, 3), keepdim=True)))))
    z = gate * z
    bn2 = lambda t: F.batch_norm(t, u.norm2.running_mean, u.norm2.running_var, u.norm2.weight, u.norm2.bias)
    if unit_cls is ELMAttentionUnit:
        r = pool(F.prelu(x, u.activation1.weight))
        expected = bn2(z * r) + r
    else:
        expected = bn2(z) + pool(x)
    with torch.no_grad():
        assert torch.allclose(u(x), expected, atol=1e-5)


def test_stem_ends_at_batchnorm():
    stem = randomize_bn(BNext("tiny").feature[0])
    x = torch.randn(1, 3, 16, 16)
    conv = F.conv2d(x, stem.conv1.weight, stride=2, padding=1)
    expected = F.batch_norm(conv, stem.bn1.running_mean, stem.bn1.running_var, stem.bn1.weight, stem.bn1.bias)
    with torch.no_grad():
        assert torch.allclose(stem(x), expected, atol=1e-5)


def test_scale_is_used_as_stored_and_projected_by_apply_constraints():
    torch.manual_seed(0)
    u = PlainUnit(8, 1).train()
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        u.scale.copy_(torch.linspace(-1, 2, 8).view(1, 8, 1, 1))
    out = u(x)
    assert u.scale.min() == -1  # forward reads the scale, never writes it
    z = u.activation2(u.norm1(u.binary_conv(u.binary_activation(u.move(x)))))
    mix = u.scale * x + (1 - u.scale) * z  # stride 1: no pooling
    assert torch.allclose(out, u.norm2(u.se(mix) * z) + x, atol=1e-6)
    apply_constraints_(u)
    assert u.scale.min() == 0 and u.scale.max() == 1
    assert not torch.allclose(u(x), out, atol=1e-6)


def test_unit_runs_twice_before_one_backward():
    """The siamese student applies one network to both views before a single backward."""
    u = PlainUnit(8, 1).train()
    a, b = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    (u(a).sum() + u(b).sum()).backward()
    assert u.scale.grad is not None and torch.isfinite(u.scale.grad).all()


@pytest.mark.slow
def test_temperature_argument_and_binarizers():
    torch.manual_seed(0)
    fresh = BNext("tiny")
    n_convs = sum(1 + (2 if a != b else 1) for a, b in zip(BNEXT_CHANNELS["tiny"], BNEXT_CHANNELS["tiny"][1:]))
    assert count_exact_binary(fresh) == (0, n_convs)  # T = 1: real-valued forward weights
    assert all(m.temperature.item() == 1 for m in binary_convs(fresh))
    student = BNext("tiny", temperature=0.0)
    assert count_exact_binary(student) == (n_convs, n_convs)
    recu = meta_bnext("tiny", binarizer="recu")
    convs = list(binary_convs(recu))
    assert len(convs) == n_convs and all(isinstance(m, ReCUConv2d) for m in convs)
    assert all(isinstance(u.binary_activation, ApproxSign) for u in recu.modules() if hasattr(u, "binary_activation"))
    assert all(isinstance(m, HardBinaryConv) for m in binary_convs(student))
    assert all(isinstance(u.binary_activation, HardSign) for u in student.modules() if hasattr(u, "binary_activation"))


@pytest.mark.parametrize("kwargs, message", [({"size": "huge"}, "size must be one of tiny, small, middle, large, got 'huge'"),
                                             ({"binarizer": "xnor"}, "binarizer must be one of bnext, recu, got 'xnor'")])
def test_unknown_size_or_binarizer_is_a_value_error_naming_the_parameter(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        BNext(**kwargs)
    assert "--" not in str(err.value)


def compat_state(entries, prefix="", device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in entries:
        if key.endswith("num_batches_tracked"):
            state[prefix + key] = torch.tensor(7, device=device)
        elif device == "meta":
            state[prefix + key] = torch.empty(shape, device="meta")
        else:
            state[prefix + key] = torch.randn(shape, generator=gen)
    return state


def load_bnext(model, source):
    """What a student does with ``backbone_weights``: the shared loader with BNext's key filter."""
    load_weights_file(model, source, f"bnext_{model.size}", checkpoint_filter_fn)


@pytest.mark.parametrize("size", SIZES)
def test_official_key_list_fits_exactly(compat_keys, size):
    model = meta_bnext(size)
    assert state_dict_mismatch(model, compat_state(compat_keys[size], device="meta")) == ""
    assert list(model.state_dict()) == [k for k, _ in compat_keys[size]]


@pytest.fixture(scope="module")
def tiny_checkpoint(compat_keys, tmp_path_factory):
    """A .pth.tar laid out like the official release: DataParallel keys under 'state_dict'."""
    state = compat_state(compat_keys["tiny"], "module.")
    for key in state:
        if key.endswith("temperature"):
            state[key] = torch.zeros(1)
    path = tmp_path_factory.mktemp("ckpt") / "bnext_tiny.pth.tar"
    torch.save({"epoch": 512, "state_dict": state, "best_top1_acc": 72.4}, path)
    return path, state


def test_pth_tar_values_are_loaded(tiny_checkpoint):
    path, state = tiny_checkpoint
    model = BNext("tiny")
    load_bnext(model, path)
    conv = model.feature[5].FFN.binary_conv
    assert torch.equal(conv.weight, state["module.feature.5.FFN.binary_conv.weight"])
    assert torch.equal(model.fc.bias, state["module.fc.bias"])
    assert model.feature[3].Attention.norm1.num_batches_tracked.item() == 7
    exact, total = count_exact_binary(model)
    assert exact == total == 31  # the checkpoint's T = 0 makes every binary conv pure sign


def test_headless_model_drops_the_imagenet_classifier_a_task_head_is_never_replaced(tiny_checkpoint):
    path, state = tiny_checkpoint
    model = BNext("tiny", num_classes=0)
    load_bnext(model, path)
    assert torch.equal(model.prelu.weight, state["module.prelu.weight"])
    rehead = BNext("tiny", num_classes=701)
    init_fc = rehead.fc.weight.clone()
    with pytest.raises(UserError, match=r"fc\.weight \(1000, 1024\) vs \(701, 1024\)"):
        load_bnext(rehead, path)
    assert torch.equal(rehead.fc.weight, init_fc)


def test_missing_key_is_a_user_error_naming_file_and_key(tiny_checkpoint, tmp_path):
    _, state = tiny_checkpoint
    broken = dict(state)
    del broken["module.feature.2.Attention.move.bias"]
    path = tmp_path / "broken.pth.tar"
    torch.save({"state_dict": broken}, path)
    with pytest.raises(UserError, match=r"broken\.pth\.tar does not match model 'bnext_tiny': "
                                        r"1 missing keys \(feature\.2\.Attention\.move\.bias\)"):
        load_bnext(BNext("tiny"), path)


def test_shape_mismatch_and_wrong_size_are_user_errors(tiny_checkpoint, tmp_path):
    path, state = tiny_checkpoint
    broken = dict(state)
    broken["module.feature.1.FFN_1.binary_conv.weight"] = torch.zeros(32, 32, 3, 3)
    broken_path = tmp_path / "wide.pth"
    torch.save(broken, broken_path)  # a bare state dict, still with the DataParallel prefix
    with pytest.raises(UserError, match=r"1 shape mismatches \(feature\.1\.FFN_1\.binary_conv\.weight "
                                        r"\(32, 32, 3, 3\) vs \(32, 32, 1, 1\)\)"):
        load_bnext(BNext("tiny"), broken_path)
    with pytest.raises(UserError, match="does not match model 'bnext_small'"):
        load_bnext(meta_bnext("small"), path)


def test_recu_model_does_not_silently_take_bnext_binarizer_state(tiny_checkpoint):
    with pytest.raises(UserError, match="binary_conv.alpha"):
        load_bnext(meta_bnext("tiny", binarizer="recu"), tiny_checkpoint[0])


def test_unreadable_files_are_user_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(UserError, match=r"weights file \S*notes\.txt ") as err:
        load_bnext(BNext("tiny"), text)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="does not exist"):
        load_bnext(BNext("tiny"), tmp_path / "absent.pth.tar")
    odd = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], odd)
    with pytest.raises(UserError, match="list.pth holds no state dict"):
        load_bnext(BNext("tiny"), odd)


class _WritesAFile:
    """Unpickling calls ``open(marker, "w")``: any code a trusting torch.load would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_weights_file_with_executable_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "bnext_tiny.pth.tar"
    torch.save({"state_dict": {"fc.bias": torch.zeros(3)}, "payload": _WritesAFile(marker)}, path)
    assert not marker.exists()
    with pytest.raises(UserError, match="holds executable content") as err:
        build_model("bicrossnet_bnext_tiny", 5, backbone_weights=str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
