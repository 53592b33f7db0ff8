import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.binary import (
    ApproxSign,
    apply_constraints_,
    BinaryConv2d,
    BinarizerSchedule,
    HardBinaryConv,
    HardSign,
    LearnableBias,
    ReCUConv2d,
    binary_convs,
    count_exact_binary,
)


def sign_and_grad(module, x):
    x = x.clone().requires_grad_(True)
    upstream = torch.arange(1.0, x.numel() + 1)
    y = module(x)
    (y * upstream).sum().backward()
    return y.detach(), x.grad, upstream


def test_hardsign_values_and_clamp_gradient():
    x = torch.tensor([-2.0, -1.5, -1.49, -0.3, 0.0, 0.3, 1.5, 1.51, 7.0])
    y, grad, upstream = sign_and_grad(HardSign(), x)
    assert y.tolist() == [-1, -1, -1, -1, 1, 1, 1, 1, 1]  # sign(0) = +1
    pass_through = torch.tensor([0, 1, 1, 1, 1, 1, 1, 0, 0.0])  # |x| <= 1.5 inclusive
    assert torch.equal(grad, upstream * pass_through)


def test_approxsign_values_and_polynomial_gradient():
    x = torch.tensor([-1.2, -1.0, -0.5, 0.0, 0.25, 0.9, 3.0])
    y, grad, upstream = sign_and_grad(ApproxSign(), x)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    expected = upstream * torch.tensor([0.0, 0.0, 1.0, 2.0, 1.5, 0.2, 0.0])
    assert torch.allclose(grad, expected)


@pytest.mark.parametrize("act", [HardSign, ApproxSign])
def test_activation_temperature_is_a_checkpoint_buffer_without_effect(act):
    m = act()
    assert "temperature" in dict(m.named_buffers()) and m.temperature.shape == (1,)
    x = torch.randn(2, 3, 4, 4)
    before = m(x)
    m.temperature.fill_(1e-3)
    assert torch.equal(m(x), before)


def test_learnable_bias_shifts_each_channel():
    m = LearnableBias(3)
    assert m.bias.shape == (1, 3, 1, 1) and not m.bias.any()
    with torch.no_grad():
        m.bias.copy_(torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1))
    x = torch.zeros(2, 3, 2, 2)
    assert torch.equal(m(x)[1, :, 1, 0], torch.tensor([1.0, -2.0, 0.5]))


def make_hard_conv(temperature, stride=1):
    torch.manual_seed(0)
    conv = HardBinaryConv(3, 4, 3, stride=stride, padding=1, temperature=temperature)
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight) * 0.8)
        conv.weight[0, 0, 0, 0] = 0.0
    return conv


@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.0, 5e-8])
def test_hard_binary_conv_forward_weight_and_identity_ste(temperature):
    conv = make_hard_conv(temperature, stride=2).eval()
    w = conv.weight.detach().clone()
    if temperature < 1e-7:
        expected_w = torch.where(w >= 0, 1.0, -1.0)
        assert expected_w[0, 0, 0, 0] == 1  # sign(0) = +1
    else:
        expected_w = torch.clamp(w / temperature, -1, 1)
    assert torch.equal(conv.binary_weight(), expected_w)

    x = torch.randn(2, 3, 8, 8)
    x_ref = x.clone().requires_grad_(True)
    w_ref = expected_w.clone().requires_grad_(True)
    ref = F.conv2d(x_ref, w_ref, stride=2, padding=1)
    x.requires_grad_(True)
    out = conv(x)
    assert torch.allclose(out, ref, atol=1e-6)
    upstream = torch.randn_like(ref)
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    # Identity straight-through: latent gradient = gradient w.r.t. the forward weight,
    # even where clamp(w / T) saturates.
    assert torch.allclose(conv.weight.grad, w_ref.grad, atol=1e-5)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)


def test_latent_weights_are_projected_by_apply_constraints_not_by_forward():
    conv = make_hard_conv(1.0)
    with torch.no_grad():
        conv.weight[1, 2] = torch.tensor([[3.0, -2.0, 1.4], [-1.6, 0.2, 1.5], [9.0, -9.0, 0.0]])
    x = torch.randn(1, 3, 5, 5)
    before = conv.train()(x)
    assert conv.weight[1, 2, 0, 0] == 3.0
    apply_constraints_(nn.Sequential(conv))
    expected = torch.tensor([[1.5, -1.5, 1.4], [-1.5, 0.2, 1.5], [1.5, -1.5, 0.0]])
    assert torch.equal(conv.weight[1, 2], expected)
    assert conv.weight.abs().max() <= 1.5
    # With T = 1 every |w| >= 1 saturates at ±1 either way: projecting changes no output.
    assert torch.equal(conv(x), before)


def test_hard_binary_conv_two_forwards_share_one_backward():
    """The siamese student applies one network to both views before a single backward."""
    conv = make_hard_conv(0.0).train()
    a, b = torch.randn(2, 3, 6, 6), torch.randn(2, 3, 6, 6)
    (conv(a).sum() + conv(b).sum()).backward()
    both = conv.weight.grad.clone()
    conv.weight.grad = None
    conv(a).sum().backward()
    conv(b).sum().backward()
    assert torch.allclose(both, conv.weight.grad, atol=1e-5)


def recu_reference(w, tau):
    """ReCU binarizer written out with masks instead of clamp (independent of the module)."""
    out_chs = w.shape[0]
    flat = w.reshape(out_chs, -1)
    centered = flat - flat.mean(dim=1, keepdim=True)
    n = flat.shape[1]
    std = torch.sqrt((centered ** 2).sum(dim=1, keepdim=True) / (n - 1) + 1e-5)
    w1 = (2 * math.sqrt(2) * centered / std).reshape_as(w)
    q = -w1.abs().mean().item() * math.log(2 - 2 * tau)
    inside = (w1.abs() <= q).to(w.dtype)
    w2 = w1 * inside + q * torch.sign(w1).detach() * (1 - inside)
    return w1, q, w2


@pytest.mark.parametrize("tau", [0.85, 0.6])
def test_recu_quantile_clamp_and_gradient_match_direct_computation(tau):
    torch.manual_seed(1)
    conv = ReCUConv2d(4, 5, 3, padding=1, tau=tau)
    with torch.no_grad():
        conv.weight.normal_(0.3, 0.7)
    assert conv.alpha.shape == (5, 1, 1) and 0 <= conv.alpha.min() and conv.alpha.max() < 1

    w_ref = conv.weight.detach().clone().requires_grad_(True)
    w1, q, w2 = recu_reference(w_ref, tau)
    assert conv.quantile(conv.standardized_weight()).item() == pytest.approx(q, rel=1e-5)
    clamped = (w1.abs() > q)
    assert clamped.any() and (~clamped).any()
    expected_w = torch.where(w2 >= 0, 1.0, -1.0)
    assert torch.equal(conv.binary_weight(), expected_w)

    x = torch.randn(2, 4, 6, 6)
    out = conv(x)
    assert torch.allclose(out, F.conv2d(x, expected_w, padding=1) * conv.alpha.detach(), atol=1e-5)
    # Straight-through inside the clamp: the backward is that of conv(x, w2).
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (F.conv2d(x, w2, padding=1) * conv.alpha.detach() * upstream).sum().backward()
    assert torch.allclose(conv.weight.grad, w_ref.grad, atol=1e-4)


def test_recu_clamped_weights_get_no_gradient():
    torch.manual_seed(2)
    conv = ReCUConv2d(4, 3, 1, tau=0.6)
    w1 = conv.standardized_weight().detach().requires_grad_(True)
    q = conv.quantile(w1)
    w2 = torch.clamp(w1, -q, q)
    (w2 + (torch.where(w2 >= 0, 1.0, -1.0) - w2).detach()).sum().backward()
    assert torch.equal(w1.grad, (w1.abs() <= q).float())


def mixed_model():
    return nn.Sequential(
        HardBinaryConv(3, 3, 3, temperature=1.0),
        nn.Sequential(nn.Conv2d(3, 3, 1), HardBinaryConv(3, 3, 1, temperature=0.5)),
        ReCUConv2d(3, 3, 1),
    )


def test_binary_convs_finds_every_subclass_and_only_those():
    model = mixed_model()
    found = list(binary_convs(model))
    assert [type(m) for m in found] == [HardBinaryConv, HardBinaryConv, ReCUConv2d]
    assert all(isinstance(m, BinaryConv2d) for m in found)


def doc_tau(epoch, epochs):
    """docs/method.md section 2.2: tau(e) = A*exp(e/E) + B, A = (0.99 - 0.85)/(e - 1), B = 0.85 - A."""
    a = (0.99 - 0.85) / (math.e - 1)
    b = 0.85 - a
    return a * math.exp(epoch / epochs) + b


def test_schedule_sets_recu_tau_by_the_documented_formula():
    model = mixed_model()
    schedule = BinarizerSchedule(model, epochs=120)
    taus = []
    for epoch in (0, 1, 60, 119):
        schedule.start_epoch(epoch)
        taus.append(model[2].tau.item())
        assert model[2].tau.item() == torch.tensor([doc_tau(epoch, 120)]).item()  # the float32 buffer value
    assert taus[0] == pytest.approx(0.85) and schedule.tau(120) == pytest.approx(0.99)
    assert schedule.tau(60) == pytest.approx(0.85 + 0.14 * (math.sqrt(math.e) - 1) / (math.e - 1))
    assert all(a < b for a, b in zip(taus, taus[1:]))
    assert model[0].temperature.item() == 1 and model[1][1].temperature.item() == 0.5  # BNext convs untouched


def test_schedule_decays_bnext_temperature_once_per_epoch_end():
    model = mixed_model()
    schedule = BinarizerSchedule(model, epochs=10, temperature_decay=0.9)
    for k in range(1, 4):
        schedule.start_epoch(k - 1)
        schedule.end_epoch()
        expected = torch.tensor([1.0]) * 0.9 ** k
        assert model[0].temperature.item() == pytest.approx(0.9 ** k)
        assert model[1][1].temperature.item() == pytest.approx(0.5 * 0.9 ** k)
        assert torch.allclose(model[0].temperature, expected)
    assert model[2].tau.item() == pytest.approx(doc_tau(2, 10))  # end_epoch leaves ReCU alone


def test_schedule_is_bit_identical_to_repeated_multiplication():
    """The trainer of record multiplied the float32 buffer in place each epoch; so does the schedule."""
    model = mixed_model()
    schedule = BinarizerSchedule(model, epochs=300, temperature_decay=0.9)
    reference = torch.ones(1)
    for _ in range(200):
        schedule.end_epoch()
        reference.mul_(0.9)
    assert torch.equal(model[0].temperature, reference)


def test_schedule_without_decay_or_recu_changes_nothing():
    model = mixed_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    schedule = BinarizerSchedule(nn.Sequential(model[0], model[1]), epochs=5)
    for epoch in range(5):
        schedule.start_epoch(epoch)
        schedule.end_epoch()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kwargs, call, message", [
    ({"epochs": 0}, None, "epochs must be >= 1, got 0"),
    ({"epochs": 3, "temperature_decay": -0.5}, None, "temperature_decay must be >= 0"),
    ({"epochs": 3}, 3, r"epoch must be in \[0, 3\), got 3"),
])
def test_schedule_rejects_bad_parameters_by_name(kwargs, call, message):
    with pytest.raises(ValueError, match=message) as err:
        BinarizerSchedule(mixed_model(), **kwargs).start_epoch(call)
    assert "--" not in str(err.value)


def test_count_exact_binary_tracks_temperature():
    torch.manual_seed(3)
    model = mixed_model()
    # T = 1 and T = 0.5 with Kaiming-uniform weights (|w| < 1): real-valued; ReCU is always +-1.
    assert count_exact_binary(model) == (1, 3)
    with torch.no_grad():
        model[1][1].weight.fill_(0.7)
    assert count_exact_binary(model) == (2, 3)  # clamp(0.7 / 0.5) = 1 everywhere
    for conv in (model[0], model[1][1]):
        conv.temperature.zero_()
    assert count_exact_binary(model) == (3, 3)
