import json

import pytest
import torch
import torch.nn as nn

from models import _registry, register_model
from models.binary import HardBinaryConv, ReCUConv2d
from models.bnext import BNEXT_CHANNELS, BNext
from models.complexity import build, main, measure

# BNext README: OPs (BOPs/64 + FLOPs/8) at 1x3x224x224, in G.
PUBLISHED_OPS = {"tiny": 0.077, "small": 0.172, "middle": 0.317, "large": 0.819}


def macs_from_channel_list(ch, side=224, num_classes=1000):
    """(binary MACs, other MACs) of BNext written out from the channel list."""
    side //= 2
    other = side * side * 27 * ch[0] + ch[-1] * num_classes
    binary = 0
    for i, (cin, cout) in enumerate(zip(ch, ch[1:]), start=1):
        if i > 1 and cin != cout:
            side //= 2
        n_1x1 = 1 if cin == cout else 2
        binary += side * side * cin * cin * (9 + n_1x1)
        other += (1 + n_1x1) * 2 * cin * (cin // 8)  # the two 1x1 convs of each SE gate
    return binary, other


@pytest.fixture(scope="module")
def stats_224():
    stats = {}
    for size in BNEXT_CHANNELS:
        with torch.device("meta"):
            stats[size] = measure(BNext(size), torch.zeros(1, 3, 224, 224))
    return stats


@pytest.mark.slow
@pytest.mark.parametrize("size", list(BNEXT_CHANNELS))
def test_published_ops_within_3_percent(stats_224, size):
    assert stats_224[size]["ops_8bit"] / 1e9 == pytest.approx(PUBLISHED_OPS[size], rel=0.03)


@pytest.mark.slow
@pytest.mark.parametrize("size", list(BNEXT_CHANNELS))
def test_counts_match_the_architecture_formula(stats_224, size):
    s = stats_224[size]
    bops, flops = macs_from_channel_list(BNEXT_CHANNELS[size])
    assert (s["bops"], s["flops"]) == (bops, flops)
    assert s["ops"] == bops / 64 + flops
    assert s["ops_8bit"] == bops / 64 + flops / 8


@pytest.mark.slow
def test_bnext_tiny_figures(stats_224):
    s = stats_224["tiny"]
    assert round(s["params"] / 1e6, 2) == 30.86
    assert round(s["binary_params"] / 1e6, 2) == 28.25
    assert round(s["bops"] / 1e9, 3) == 4.817
    assert s["flops"] / 1e6 == pytest.approx(13.3, rel=0.01)


@pytest.mark.slow
def test_real_and_meta_tensors_give_the_same_counts_and_modes_are_restored():
    torch.manual_seed(0)
    model = BNext("tiny", num_classes=10).train()
    model.feature[3].eval()
    real = measure(model, torch.randn(2, 3, 64, 64))
    assert model.training and not model.feature[3].training and model.feature[4].training
    with torch.device("meta"):
        meta = measure(BNext("tiny", num_classes=10), torch.zeros(2, 3, 64, 64))
    assert real == meta
    bops, flops = macs_from_channel_list(BNEXT_CHANNELS["tiny"], side=64, num_classes=10)
    assert (real["bops"], real["flops"]) == (2 * bops, 2 * flops)  # batch of two


def test_nested_and_mixed_layers_are_counted_once():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),                                       # 8*8*3*9*4   = 6912
        nn.Sequential(HardBinaryConv(4, 8, 3, padding=1, temperature=0.0),   # 8*8*4*9*8   = 18432
                      nn.Sequential(ReCUConv2d(8, 8, 1, stride=2))),        # 4*4*8*8     = 1024
        nn.Conv2d(8, 2, 1),                                                  # 4*4*8*2     = 256
        nn.Flatten(),
        nn.Linear(32, 5),                                                    # 32*5        = 160
    )
    s = measure(model, torch.randn(1, 3, 8, 8))
    assert s["bops"] == 18432 + 1024
    assert s["flops"] == 6912 + 256 + 160
    assert s["binary_params"] == 4 * 8 * 9 + 8 * 8
    assert s["params"] == sum(p.numel() for p in model.parameters())


def test_cli_json_and_table(capsys):
    main(["--model", "bnext_tiny", "--h", "64", "--w", "96", "--batch", "1", "--device", "meta", "--json"])
    printed = json.loads(capsys.readouterr().out)
    bops, flops = macs_from_channel_list(BNEXT_CHANNELS["tiny"], side=64)
    assert printed["bops"] == bops * 96 // 64 and printed["params"] == 30862236
    main(["--model", "bnext_small", "--h", "224", "--w", "224", "--batch", "1", "--device", "meta"])
    table = capsys.readouterr().out
    assert "1x3x224x224" in table
    assert "OPs = BOPs/64 + FLOPs/8" in table and "172 M" in table
    assert "63.57 M" in table  # binary parameters


def test_cli_builds_registry_models_with_their_num_classes(monkeypatch, capsys):
    monkeypatch.setattr(_registry, "_MODELS", dict(_registry._MODELS))
    built = {}

    @register_model
    def toy_net(num_classes):
        built["num_classes"] = num_classes
        return nn.Sequential(HardBinaryConv(3, 4, 1), nn.Flatten(), nn.Linear(64, num_classes))

    main(["--model", "toy_net", "--h", "4", "--w", "4", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert built["num_classes"] == 701
    assert printed["bops"] == 2 * 4 * 4 * 3 * 4 and printed["flops"] == 2 * 64 * 701


def test_cli_unknown_model_is_a_user_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "bnext_huge"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: --model 'bnext_huge' is not a known model" in err and "bnext_tiny" in err


def test_build_takes_backbones_and_retrieval_networks_from_the_one_registry():
    backbone = build("bnext_small", device="meta")
    assert type(backbone) is BNext and backbone.size == "small" and backbone.fc.out_features == 1000
    student = build("bicrossnet_bnext_tiny", device="meta")
    assert student.head.classifiers[0].classifier.out_features == 701
    assert build("bnext_tiny", num_classes=5, device="meta").fc.out_features == 5
    with pytest.raises(ValueError, match="'bnext_huge' is not registered"):
        build("bnext_huge", device="meta")
