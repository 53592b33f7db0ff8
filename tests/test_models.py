"""Students, teachers, the siamese wrapper and the registry: wiring, weights and loading, by value."""
import re

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml

import models.bicrossnet
import models.bnext
import models.teacher
from models import MultiViewNet, build_model, list_models, model_option_names, register_model
from runs.checkpoints import load_run
from models import _registry
from models._helpers import check_input_size
from models.binary import BinaryConv2d, count_exact_binary
from models.bicrossnet import BiCrossNet
from models.bnext import BNext
from models.teacher import ConvNeXtBackbone
from utils.errors import UserError
from utils.files import atomic_write_text, save_checkpoint

SIZES = ("tiny", "small", "middle", "large")
STUDENTS = [f"bicrossnet_bnext_{s}" for s in SIZES]
TEACHERS = [f"mccg_convnext_{v}" for v in ("atto", "femto", "pico", "nano", "tiny", "small", "base")]
BACKBONES = [f"bnext_{s}" for s in SIZES]


def record_features(backbone):
    """Make ``backbone.forward_features`` keep its last output, to check what the head received."""
    store = {}
    forward_features = backbone.forward_features

    def recording(x):
        store["out"] = forward_features(x)
        return store["out"]

    backbone.forward_features = recording
    return store


# --- registry ------------------------------------------------------------------------------

@pytest.mark.slow
def test_registry_lists_every_network_and_each_builds():
    assert sorted(STUDENTS + TEACHERS) == list_models()
    for name in list_models():
        with torch.device("meta"):  # structure only: full-size inits would take ~20 s
            net = build_model(name, 17, block=1, head_input="pooled")
        assert isinstance(net, BiCrossNet)
        backbone_type = BNext if name in STUDENTS else ConvNeXtBackbone
        assert isinstance(net.backbone, backbone_type)
        assert net.head.head_input == "pooled" and len(net.head.classifiers) == 2
        for cb in net.head.classifiers:
            assert cb.fc.in_features == net.backbone.num_features and cb.classifier.out_features == 17
        out = net.eval()(torch.empty(2, 3, 64, 64, device="meta"))
        assert out.shape == (2, 512, 2)


def test_builders_declare_their_options():
    student = {"block", "head_input", "binarizer", "temperature", "backbone_weights"}
    teacher = {"block", "head_input", "backbone_weights", "pretrained"}
    for name in STUDENTS:
        assert set(model_option_names(name)) == student
    for name in TEACHERS:
        assert set(model_option_names(name)) == teacher


def test_each_size_is_an_explicit_registered_function():
    for name in STUDENTS + TEACHERS + BACKBONES:
        module = {"bicrossnet": models.bicrossnet, "mccg": models.teacher, "bnext": models.bnext}[name.split("_")[0]]
        builder = getattr(module, name)
        assert builder.__name__ == name and _registry._MODELS[name].builder is builder


def test_bare_backbones_are_buildable_but_not_offered_for_training():
    assert list_models() == sorted(STUDENTS + TEACHERS)
    assert list_models("retrieval") == list_models()
    assert list_models("backbone") == sorted(BACKBONES)
    assert list_models(None) == sorted(STUDENTS + TEACHERS + BACKBONES)
    assert model_option_names("bnext_tiny") == ["binarizer", "temperature"]
    with torch.device("meta"):
        net = build_model("bnext_tiny", 1000)
    assert type(net) is BNext and net.fc.out_features == 1000 and net.size == "tiny"


def test_register_model_records_the_kind(monkeypatch):
    monkeypatch.setattr(_registry, "_MODELS", dict(_registry._MODELS))

    @register_model
    def toy_retrieval(num_classes, width=3):
        return torch.nn.Linear(width, num_classes)

    @register_model(kind="backbone")
    def toy_backbone(num_classes=10):
        return torch.nn.Linear(2, num_classes)

    assert "toy_retrieval" in list_models() and "toy_backbone" not in list_models()
    assert "toy_backbone" in list_models("backbone")
    assert build_model("toy_retrieval", 4, width=5).weight.shape == (4, 5)
    assert model_option_names("toy_retrieval") == ["width"]
    with pytest.raises(ValueError, match="registered twice"):
        register_model(toy_retrieval)
    with pytest.raises(ValueError, match="kind must be one of retrieval, backbone"):
        register_model(kind="head")


def test_unknown_model_is_a_value_error_listing_the_choices():
    with pytest.raises(ValueError, match="bicrossnet_bnext_tiny.*bnext_tiny") as err:
        build_model("bicrossnet_resnet50", 10)
    assert "'bicrossnet_resnet50'" in str(err.value) and "--" not in str(err.value)
    with pytest.raises(ValueError, match="kind must be one of"):
        list_models("students")


@pytest.mark.parametrize("name, options, message", [
    ("bicrossnet_bnext_tiny", {"block": 3}, "block must be 0, 1 or 2"),
    ("bicrossnet_bnext_tiny", {"head_input": "flat"}, "head_input must be one of spatial, pooled, got 'flat'"),
    ("bicrossnet_bnext_tiny", {"binarizer": "xnor"}, "binarizer must be one of bnext, recu"),
    ("mccg_convnext_atto", {"pretrained": True, "backbone_weights": "w.pth"}, "pretrained=True .* backbone_weights"),
])
def test_bad_builder_options_are_value_errors_naming_the_option(name, options, message):
    with torch.device("meta"), pytest.raises(ValueError, match=message) as err:
        build_model(name, 5, **options)
    assert "--" not in str(err.value)


# --- students ------------------------------------------------------------------------------

@pytest.mark.slow
def test_student_starts_binary_unless_annealing_is_asked_for():
    torch.manual_seed(0)
    net = build_model("bicrossnet_bnext_tiny", 5)
    exact, total = count_exact_binary(net)
    assert total == sum(isinstance(m, BinaryConv2d) for m in net.modules()) > 0
    assert exact == total
    conv = next(m for m in net.modules() if isinstance(m, BinaryConv2d))
    torch.testing.assert_close(conv.binary_weight(), torch.sign(conv.weight))
    annealing = build_model("bicrossnet_bnext_tiny", 5, temperature=1.0)
    assert count_exact_binary(annealing)[0] == 0


@pytest.mark.slow
def test_student_at_256_wires_bnext_map_into_head():
    torch.manual_seed(0)
    net = build_model("bicrossnet_bnext_tiny", 5).eval()
    fmap = record_features(net.backbone)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        out = net(x)
    assert fmap["out"].shape == (1, 1024, 8, 8)
    assert out.shape == (1, 512, 3)
    with torch.no_grad():
        expected = torch.stack([cb.forward_features(v) for cb, v in
                                zip(net.head.classifiers, net.head.branch_vectors(fmap["out"]))], 2)
        gap = net.head.classifiers[0].forward_features(fmap["out"].mean((2, 3)))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out[:, :, 0], gap)  # BNext has no forward_global: the head pools


@pytest.mark.slow
def test_student_small_input_train_and_forward_heads():
    torch.manual_seed(0)
    net = build_model("bicrossnet_bnext_tiny", 6, block=1)
    x = torch.randn(2, 3, 64, 64)
    logits, features = net.train()(x)
    assert len(logits) == len(features) == 2
    assert all(lg.shape == (2, 6) for lg in logits) and all(f.shape == (2, 512) for f in features)
    net.eval()
    with torch.no_grad():
        out = net(x)
        eval_logits, eval_features = net.forward_heads(x)
    torch.testing.assert_close(torch.stack(eval_features, 2), out)
    for lg, f, cb in zip(eval_logits, eval_features, net.head.classifiers):
        torch.testing.assert_close(lg, cb.classifier(f))


def test_student_loads_official_bnext_checkpoint(tmp_path):
    torch.manual_seed(1)
    imagenet = BNext("tiny", num_classes=1000, temperature=0.0)
    for buf in imagenet.buffers():  # BN statistics and temperatures must travel too
        if buf.is_floating_point():
            buf.copy_(torch.rand_like(buf))
    state = imagenet.state_dict()
    path = tmp_path / "bnext_tiny.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 256}, path)

    torch.manual_seed(2)
    net = build_model("bicrossnet_bnext_tiny", 5, backbone_weights=str(path))
    loaded = net.backbone.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    for k, v in loaded.items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=k)
    torch.manual_seed(2)
    fresh = build_model("bicrossnet_bnext_tiny", 5).backbone.state_dict()
    assert sum(not torch.equal(fresh[k], v) for k, v in loaded.items()) > len(loaded) // 2
    with pytest.raises(UserError):
        build_model("bicrossnet_bnext_tiny", 5, backbone_weights=str(tmp_path / "missing.pth.tar"))


# --- teachers ------------------------------------------------------------------------------

@pytest.mark.slow
def test_teacher_at_256_global_branch_is_layernorm_after_gap():
    torch.manual_seed(0)
    net = build_model("mccg_convnext_atto", 5).eval()
    convnext = net.backbone.model
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        out = net(x)
        fmap = convnext.stages(convnext.stem(x))  # stage-4 map, before the final norm
        norm = convnext.head.norm
        g = F.layer_norm(fmap.mean((2, 3)), (fmap.shape[1],), norm.weight, norm.bias, norm.eps)
        vectors = [g] + net.head.branch_vectors(fmap)[1:]
        expected = torch.stack([cb.forward_features(v) for cb, v in zip(net.head.classifiers, vectors)], 2)
    assert fmap.shape == (1, 320, 8, 8) and out.shape == (1, 512, 3)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(g, fmap.mean((2, 3)))


@pytest.mark.slow
def test_teacher_small_input_train_mode_and_eval_logits():
    torch.manual_seed(0)
    net = build_model("mccg_convnext_atto", 4)
    x = torch.randn(3, 3, 64, 64)
    logits, features = net.train()(x)
    assert len(logits) == 3 and all(lg.shape == (3, 4) for lg in logits)
    net.eval()
    with torch.no_grad():
        eval_logits, eval_features = net.forward_heads(x)
        out = net(x)
    torch.testing.assert_close(torch.stack(eval_features, 2), out)
    torch.testing.assert_close(eval_logits[2], net.head.classifiers[2].classifier(eval_features[2]))


def original_convnext_layout(timm_state):
    """Rename timm ConvNeXt keys to the original (facebookresearch) checkpoint layout."""
    renames = [
        (r"^stem\.", "downsample_layers.0."),
        (r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1."),
        (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2."),
        (r"\.conv_dw\.", ".dwconv."),
        (r"\.mlp\.fc(\d)\.", r".pwconv\1."),
        (r"^head\.norm\.", "norm."),
        (r"^head\.fc\.", "head."),
    ]
    out = {}
    for k, v in timm_state.items():
        for pattern, repl in renames:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def randomized_convnext(variant):
    torch.manual_seed(3)
    model = timm.create_model(f"convnext_{variant}", num_classes=1000)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model.state_dict()


def assert_backbone_equals(net, state):
    loaded = net.backbone.model.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("head.fc.")}
    for k, v in loaded.items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=k)


def test_teacher_loads_timm_checkpoint(tmp_path):
    state = randomized_convnext("atto")
    path = tmp_path / "convnext_atto.pth"
    torch.save(state, path)
    assert_backbone_equals(build_model("mccg_convnext_atto", 5, backbone_weights=str(path)), state)


def test_teacher_loads_original_convnext_checkpoint(tmp_path):
    state = randomized_convnext("atto")
    original = original_convnext_layout(state)
    for key in ("downsample_layers.0.0.weight", "downsample_layers.1.1.weight", "stages.0.0.dwconv.weight",
                "stages.3.1.pwconv2.bias", "stages.2.0.gamma", "norm.weight", "head.weight"):
        assert key in original
    path = tmp_path / "convnext_atto_1k_224.pth"
    torch.save({"model": original}, path)
    assert_backbone_equals(build_model("mccg_convnext_atto", 5, backbone_weights=str(path)), state)


@pytest.mark.slow
def test_teacher_weight_errors_are_user_errors(tmp_path):
    femto_state = timm.create_model("convnext_femto", num_classes=0).state_dict()
    femto = tmp_path / "convnext_femto.pth"
    torch.save(femto_state, femto)
    with pytest.raises(UserError, match="convnext_femto.pth does not match model 'convnext_atto': .*shape mismatches"):
        build_model("mccg_convnext_atto", 5, backbone_weights=str(femto))
    femto_original = tmp_path / "convnext_femto_1k_224.pth"
    torch.save({"model": original_convnext_layout(femto_state)}, femto_original)
    with pytest.raises(UserError, match="convnext_femto_1k_224.pth does not match model 'convnext_atto'"):
        build_model("mccg_convnext_atto", 5, backbone_weights=str(femto_original))
    odd_original = tmp_path / "convnext_atto_extra.pth"
    torch.save({"model": {**original_convnext_layout(randomized_convnext("atto")), "extra.weight": torch.zeros(2, 2)}},
               odd_original)
    with pytest.raises(UserError, match=r"extra.pth does not match model 'convnext_atto' \(KeyError: 'extra.weight'\)"):
        build_model("mccg_convnext_atto", 5, backbone_weights=str(odd_original))
    no_tensors = tmp_path / "log.pth"
    torch.save({"epoch": 3, "lr": 0.01}, no_tensors)
    with pytest.raises(UserError, match="log.pth holds no state dict"):
        build_model("mccg_convnext_atto", 5, backbone_weights=str(no_tensors))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"weights file \S*junk\.pth "):
        build_model("mccg_convnext_atto", 5, backbone_weights=str(junk))
    with pytest.raises(UserError, match="missing.pth does not exist"):
        build_model("mccg_convnext_atto", 5, backbone_weights=str(tmp_path / "missing.pth"))


def test_teacher_prefers_ema_weights_as_timm_does(tmp_path):
    state = randomized_convnext("atto")
    path = tmp_path / "convnext_atto_ema.pth"
    torch.save({"model": {k: torch.zeros_like(v) for k, v in state.items()}, "state_dict_ema": state}, path)
    assert_backbone_equals(build_model("mccg_convnext_atto", 5, backbone_weights=str(path)), state)


def test_pretrained_without_network_says_how_to_pass_a_file(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # fail at once instead of retrying for a minute
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="pass the file as backbone_weights"):
        build_model("mccg_convnext_atto", 5, pretrained=True)


# --- siamese wrapper -----------------------------------------------------------------------

def test_multi_view_net_shares_every_weight():
    torch.manual_seed(0)
    net = build_model("mccg_convnext_atto", 4)
    multi_view = MultiViewNet(net).eval()
    assert [id(p) for p in multi_view.parameters()] == [id(p) for p in net.parameters()]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        sat, drone, street = multi_view(x, x.clone(), x.clone())
    torch.testing.assert_close(sat, drone, rtol=0, atol=0)
    torch.testing.assert_close(sat, street, rtol=0, atol=0)
    torch.testing.assert_close(sat, net(x))


@pytest.mark.slow
def test_multi_view_net_accumulates_gradient_from_both_views():
    torch.manual_seed(0)
    net = build_model("mccg_convnext_atto", 4).eval()  # eval: deterministic, so each view can be replayed
    two_view = MultiViewNet(net)
    satellite, drone = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    params = [net.backbone.model.stem[0].weight, net.head.classifiers[1].fc.weight]

    def grads(loss):
        net.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in params]

    sat_out, drone_out = two_view(satellite, drone)
    both = grads(sat_out.square().sum() + drone_out.sum())
    only_sat = grads(net(satellite).square().sum())
    only_drone = grads(net(drone).sum())
    for g, gs, gd in zip(both, only_sat, only_drone):
        assert gs.abs().sum() > 0 and gd.abs().sum() > 0
        torch.testing.assert_close(g, gs + gd)


# --- finished runs -------------------------------------------------------------------------

@pytest.mark.slow
def test_load_run_gives_the_trained_network_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    trained = build_model("mccg_convnext_atto", 4, block=1)
    opts = {"model": "mccg_convnext_atto", "model_options": {"block": 1}, "num_classes": 4, "h": 32, "w": 32}
    atomic_write_text(tmp_path / "opts.yaml", yaml.safe_dump(opts))
    save_checkpoint({"model": trained.state_dict(), "epoch": 2, "num_classes": 4}, tmp_path / "net_002.pth")
    save_checkpoint({"model": build_model("mccg_convnext_atto", 4, block=1).state_dict(), "epoch": 3,
                     "num_classes": 4}, tmp_path / "last.pth")
    x = torch.randn(2, 3, 32, 32)
    for source, which in ((tmp_path, 2), (tmp_path / "net_002.pth", "last")):
        net = load_run(source, which)
        assert isinstance(net, BiCrossNet) and not net.training
        with torch.no_grad():
            torch.testing.assert_close(net(x), trained.eval()(x), rtol=0, atol=0)
    assert not torch.equal(load_run(tmp_path).head.classifiers[0].fc.weight, trained.head.classifiers[0].fc.weight)


@pytest.mark.slow
def test_input_size_probe_is_a_value_error_without_flags():
    torch.manual_seed(0)
    net = build_model("bicrossnet_bnext_tiny", 5).train()
    with pytest.raises(ValueError, match="bicrossnet_bnext_tiny cannot take 40x32 inputs .*multiples of 32") as err:
        check_input_size(net, 40, 32, "bicrossnet_bnext_tiny")
    assert "--" not in str(err.value) and "\n" not in str(err.value)
    # 48 reaches the last stride-2 unit as a 3x3 map, whose pooled 1x1 shortcut used to broadcast.
    with pytest.raises(ValueError, match="cannot take 48x48 inputs .*3x3 map; it needs even sizes"):
        check_input_size(net, 48, 48, "bicrossnet_bnext_tiny")
    check_input_size(net, 64, 64, "bicrossnet_bnext_tiny")
    assert net.training
