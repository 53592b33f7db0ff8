import pytest
import torch
import torch.nn as nn
from timm.optim import Lion

from losses import BiCrossNetLoss
from models import build_model
from models.binary import BinaryConv2d, HardBinaryConv, ReCUConv2d
from optim import (OPTIMIZER_CHOICES, BiGradualUnfreezing, build_optimizers, build_schedulers,
                   partition_parameters)


class TinyStudent(nn.Module):
    """Full-precision stem + BN, one binary conv, a head: the three parameter groups of a student."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=False),
            nn.BatchNorm2d(4),
            HardBinaryConv(4, 4, 3, padding=1),
            nn.PReLU(4),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

    def forward(self, x):
        return self.head(self.backbone(x))


class TinyTeacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


EXPECTED_GROUPS = {
    "head": ["head.2.weight", "head.2.bias"],
    "full_precision": ["backbone.0.weight", "backbone.1.weight", "backbone.1.bias", "backbone.3.weight"],
    "binary": ["backbone.2.weight"],
}


def _names(groups):
    return {group: [name for name, _ in params] for group, params in groups.items()}


def test_partition_covers_every_parameter_once():
    model = TinyStudent()
    groups = partition_parameters(model)
    assert _names(groups) == EXPECTED_GROUPS
    ids = [id(p) for params in groups.values() for _, p in params]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert groups["binary"][0][1] is model.backbone[2].weight


def test_partition_keeps_recu_scale_full_precision():
    model = TinyStudent()
    model.backbone[2] = ReCUConv2d(4, 4, 3, padding=1)
    groups = _names(partition_parameters(model))
    assert groups["binary"] == ["backbone.2.weight"]
    assert "backbone.2.alpha" in groups["full_precision"]


def test_partition_rejects_tensor_shared_across_groups():
    model = TinyStudent()
    model.head.append(nn.Conv2d(4, 4, 3, bias=False))
    model.head[3].weight = model.backbone[2].weight  # binary weight also trained as a head weight
    with pytest.raises(ValueError, match=r"head\.3\.weight.*backbone\.2\.weight|backbone\.2\.weight.*head\.3\.weight"):
        partition_parameters(model)


def test_partition_accepts_tensor_shared_within_a_group():
    model = TinyStudent()
    model.head.append(nn.Linear(3, 3))
    model.head.append(nn.Linear(3, 3))
    model.head[4].weight = model.head[3].weight
    assert _names(partition_parameters(model))["head"] == ["head.2.weight", "head.2.bias", "head.3.weight",
                                                         "head.3.bias", "head.4.bias"]


def test_partition_rejects_binary_weight_that_no_optimizer_would_see():
    model = TinyStudent()
    conv = model.backbone[2]
    weight = conv.weight.detach().clone()
    del conv.weight
    conv.weight = weight  # a plain tensor: missing from model.parameters()
    with pytest.raises(ValueError, match="'backbone.2'"):
        partition_parameters(model)


def test_partition_requires_head():
    with pytest.raises(ValueError, match="head"):
        partition_parameters(nn.Sequential(nn.Linear(2, 2)))


def _snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _train_steps(model, optimizers, steps=3, set_to_none=True):
    x = torch.randn(2, 3, 8, 8)
    for _ in range(steps):
        model(x).square().mean().backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=set_to_none)


def _changed(before, model):
    return {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}


TRAINED_IN_PHASE = {
    1: set(EXPECTED_GROUPS["head"]),
    2: set(EXPECTED_GROUPS["head"] + EXPECTED_GROUPS["full_precision"]),
    3: {name for names in EXPECTED_GROUPS.values() for name in names},
}

OPTIMIZER_SETUPS = [
    ("adamwlion", dict(weight_decay=0.1)),
    ("adamlion", dict(weight_decay=0.1)),
    ("sgd", dict(weight_decay=0.1, momentum=0.9)),
    ("lion", dict(weight_decay=0.1)),
]


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("name,options", OPTIMIZER_SETUPS)
def test_unfreezing_updates_only_trainable_parameters(name, options, set_to_none):
    torch.manual_seed(0)
    model = TinyStudent()
    optimizers = build_optimizers(model, name, 0.01, **options)
    schedule = BiGradualUnfreezing(model, n1=2, n2=4)
    for epoch, phase in enumerate([1, 1, 2, 2, 3, 3]):
        assert schedule.apply(epoch) == phase
        before = _snapshot(model)
        _train_steps(model, optimizers, set_to_none=set_to_none)
        assert _changed(before, model) == TRAINED_IN_PHASE[phase], f"epoch {epoch}"


@pytest.mark.parametrize("name,options", OPTIMIZER_SETUPS)
def test_refrozen_parameters_ignore_momentum_and_weight_decay(name, options):
    # After real steps every parameter has momentum / Adam moments; freezing again (e.g. a resumed
    # run at an early epoch) must still leave the frozen ones bit-identical.
    torch.manual_seed(1)
    model = TinyStudent()
    optimizers = build_optimizers(model, name, 0.01, **options)
    schedule = BiGradualUnfreezing(model, n1=2, n2=4)
    schedule.apply(5)
    _train_steps(model, optimizers)
    assert sum(len(opt.state) for opt in optimizers.values()) == len(list(model.parameters()))
    model(torch.randn(2, 3, 8, 8)).sum().backward()  # pending gradients must be discarded on freezing
    assert schedule.apply(0) == 1
    before = _snapshot(model)
    _train_steps(model, optimizers)
    assert _changed(before, model) == TRAINED_IN_PHASE[1]


def test_unfreezing_phase_boundaries_and_names():
    model = TinyStudent()
    assert [BiGradualUnfreezing(model, 20, 20).phase(e) for e in (0, 19, 20, 300)] == [1, 1, 3, 3]
    assert [BiGradualUnfreezing(model, 0, 3).phase(e) for e in (0, 2, 3)] == [2, 2, 3]
    everything = BiGradualUnfreezing(model, 0, 0)
    assert everything.apply(0) == 3 and all(p.requires_grad for p in model.parameters())
    assert {BiGradualUnfreezing.phase_name(p) for p in (1, 2, 3)} == {
        "head only", "head + full-precision backbone", "all parameters (binary weights included)"}


@pytest.mark.parametrize("n1, n2, message", [(5, 4, r"n2 \(4\) must be >= n1 \(5\)"), (-1, 4, "n1 must be >= 0, got -1")])
def test_unfreezing_rejects_bad_epochs_naming_the_parameter(n1, n2, message):
    for check in (lambda: BiGradualUnfreezing(TinyStudent(), n1=n1, n2=n2),
                  lambda: BiGradualUnfreezing.check_boundaries(n1, n2)):
        with pytest.raises(ValueError, match=message) as err:
            check()
        assert "--" not in str(err.value)
    BiGradualUnfreezing.check_boundaries(0, 0)
    BiGradualUnfreezing.check_boundaries(20, 20)


def test_lion_steps_are_sign_steps_with_design_momentum():
    lr, wd, (beta1, beta2) = 0.01, 0.5, (0.9, 0.99)
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(50, generator=g)
    g1 = torch.randn(50, generator=g)
    # Where g2 = -0.05·g1 the momentum outweighs the new gradient: c2 = 0.004·g1, so the step's
    # sign differs from sign(g2) — a plain signSGD would fail this test.
    g2 = torch.where(torch.arange(50) % 2 == 0, -0.05 * g1, torch.randn(50, generator=g))
    param = nn.Parameter(p0.clone())
    opt = Lion([param], lr=lr, betas=(beta1, beta2), weight_decay=wd)

    param.grad = g1.clone()
    opt.step()
    p1 = p0 * (1 - lr * wd) - lr * torch.sign((1 - beta1) * g1)
    assert torch.equal(param.detach(), p1)

    param.grad = g2.clone()
    opt.step()
    m1 = (1 - beta2) * g1
    c2 = beta1 * m1 + (1 - beta1) * g2
    p2 = p1 * (1 - lr * wd) - lr * torch.sign(c2)
    assert torch.equal(param.detach(), p2)
    assert not torch.equal(torch.sign(c2), torch.sign(g2))
    m2 = beta2 * m1 + (1 - beta2) * g2
    assert torch.allclose(opt.state[param]["exp_avg"], m2, rtol=1e-6, atol=1e-9)


def _param_ids(optimizer):
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def _group_ids(model, *groups):
    parts = partition_parameters(model)
    return {id(p) for group in groups for _, p in parts[group]}


def test_bipartitioned_optimizers_split_binary_weights_to_lion():
    model = TinyStudent()
    for name, key, cls in (("adamlion", "adam", torch.optim.Adam), ("adamwlion", "adamw", torch.optim.AdamW)):
        optimizers = build_optimizers(model, name, 0.006, weight_decay=0.05)
        assert set(optimizers) == {key, "lion"}
        assert type(optimizers[key]) is cls and isinstance(optimizers["lion"], Lion)
        lion, = optimizers["lion"].param_groups
        assert lion["lr"] == pytest.approx(0.001) and lion["weight_decay"] == 0.0
        assert lion["betas"] == (0.9, 0.99)
        assert _param_ids(optimizers["lion"]) == _group_ids(model, "binary")
        adam, = optimizers[key].param_groups
        assert adam["lr"] == 0.006 and adam["weight_decay"] == 0.05
        assert _param_ids(optimizers[key]) == _group_ids(model, "head", "full_precision")


def test_teacher_gets_no_lion():
    model = TinyTeacher()
    assert set(build_optimizers(model, "adamlion", 0.01)) == {"adam"}
    assert _param_ids(build_optimizers(model, "adamlion", 0.01)["adam"]) == {id(p) for p in model.parameters()}


def test_sgd_teacher_recipe_scales_backbone_lr():
    model = TinyStudent()
    sgd = build_optimizers(model, "sgd", 0.01, weight_decay=5e-4)["sgd"]
    assert type(sgd) is torch.optim.SGD
    fp, binary, head = sgd.param_groups
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in sgd.param_groups)
    assert fp["lr"] == pytest.approx(0.003) and binary["lr"] == pytest.approx(0.003) and head["lr"] == 0.01
    assert fp["weight_decay"] == head["weight_decay"] == 5e-4 and binary["weight_decay"] == 0.0
    assert {id(p) for p in head["params"]} == _group_ids(model, "head")
    assert {id(p) for p in fp["params"] + binary["params"]} == _group_ids(model, "full_precision", "binary")


@pytest.mark.parametrize("name", OPTIMIZER_CHOICES)
def test_every_choice_covers_every_parameter_exactly_once(name):
    model = TinyStudent()
    owned = [id(p) for opt in build_optimizers(model, name, 0.01).values()
             for group in opt.param_groups for p in group["params"]]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())


def test_single_optimizer_baselines():
    model = TinyStudent()
    adam, = build_optimizers(model, "adam", 0.01, weight_decay=0.1).values()
    lion, = build_optimizers(model, "lion", 0.006, weight_decay=0.1).values()
    assert type(adam) is torch.optim.Adam and isinstance(lion, Lion)
    assert [g["weight_decay"] for g in adam.param_groups] == [0.1, 0.0]  # binary weights: no decay
    assert [g["lr"] for g in lion.param_groups] == pytest.approx([0.001, 0.001])


@pytest.mark.parametrize("name, lr, kwargs, message", [
    ("rmsprop", 0.01, {}, r"optimizer name must be one of adamlion, adamwlion, sgd, adam, lion, got 'rmsprop'"),
    ("adam", 0.0, {}, r"lr must be > 0, got 0.0"),
    ("sgd", 0.01, {"momentum": 0.0}, r"momentum must be > 0 for Nesterov SGD, got 0.0"),
])
def test_bad_optimizer_parameters_are_value_errors_naming_them(name, lr, kwargs, message):
    assert OPTIMIZER_CHOICES == ("adamlion", "adamwlion", "sgd", "adam", "lion")
    with pytest.raises(ValueError, match=message) as err:
        build_optimizers(TinyStudent(), name, lr, **kwargs)
    assert "--" not in str(err.value)


def test_schedulers_decay_each_optimizer_at_milestones():
    optimizers = build_optimizers(TinyStudent(), "adamlion", 0.006)
    schedulers = build_schedulers(optimizers, milestones=(2, 4), gamma=0.1)
    assert set(schedulers) == set(optimizers)
    lrs = []
    for _ in range(6):
        lrs.append((optimizers["adam"].param_groups[0]["lr"], optimizers["lion"].param_groups[0]["lr"]))
        for opt in optimizers.values():
            opt.step()
        for scheduler in schedulers.values():
            scheduler.step()
    expected = [0.006, 0.006, 6e-4, 6e-4, 6e-5, 6e-5]
    assert [a for a, _ in lrs] == pytest.approx(expected)
    assert [b for _, b in lrs] == pytest.approx([e / 6 for e in expected])


def test_bnext_student_partition_matches_design_figures():
    model = build_model("bicrossnet_bnext_tiny", 5)
    groups = partition_parameters(model)
    assert sum(p.numel() for _, p in groups["binary"]) == pytest.approx(28.25e6, abs=5e3)  # docs/method.md §2.1
    modules = dict(model.named_modules())
    assert all(name.endswith(".weight") and isinstance(modules[name[:-7]], BinaryConv2d)
               for name, _ in groups["binary"])
    assert {id(p) for _, p in groups["head"]} == {id(p) for p in model.head.parameters()}


@pytest.mark.slow
def test_bnext_student_first_phase_step_trains_only_the_head():
    torch.manual_seed(0)
    model = build_model("bicrossnet_bnext_tiny", 4).train()
    optimizers = build_optimizers(model, "adamlion", 0.006)
    BiGradualUnfreezing(model, n1=20, n2=20).apply(0)
    before = _snapshot(model)
    labels = torch.arange(4)
    loss, _ = BiCrossNetLoss()((model(torch.randn(4, 3, 64, 64)), model(torch.randn(4, 3, 64, 64))), labels)
    loss.backward()
    for opt in optimizers.values():
        opt.step()
    changed = _changed(before, model)
    assert changed and all(name.startswith("head.") for name in changed)
