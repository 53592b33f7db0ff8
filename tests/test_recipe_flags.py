"""Presets, the original scripts' flag spellings, and the recipe choices that used to be silent:
BatchNorm statistics of frozen parts, the Lion schedule start, the random-weights warning, and
resuming a converted run."""
import csv
import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml

import train
from training.options import PRESETS, start_warnings
from training.original_flags import REFUSED_FLAGS
from optim.unfreeze import hold_frozen_batchnorm
from utils.errors import UserError

from helpers.tiny_runs import base_args, state

REPO = Path(__file__).resolve().parents[1]


def preset_table():
    """``{flag: {'paper': cell, 'release': cell}}`` from the flag rows of docs/method.md §5."""
    section = (REPO / "docs" / "method.md").read_text().split("## 5.")[1].split("## 6.")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[1].startswith("`--"):
            for flag in re.findall(r"`--(\w+)`", cells[1]):
                rows[flag] = {"paper": cells[2], "release": cells[3]}
    return rows


def matches(value, cell: str) -> bool:
    if isinstance(value, bool):
        return cell == ("on" if value else "off")
    if isinstance(value, list):
        return [str(v) for v in value] == cell.split()
    if isinstance(value, (int, float)):
        return float(value) == pytest.approx(float(Fraction(cell)))
    return str(value) == cell


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_resolve_to_the_documented_values(tmp_path, preset):
    table = preset_table()
    assert set(PRESETS["release"]) <= set(table)  # every value a preset sets is documented
    args = train.parse_args(["--name", "x", "--checkpoint_dir", str(tmp_path), "--preset", preset])
    wrong = {flag: (getattr(args, flag.replace("autoaugment", "DA")), cells[preset])
             for flag, cells in table.items() if not matches(getattr(args, flag.replace("autoaugment", "DA")),
                                                            cells[preset])}
    assert not wrong


def test_explicit_flags_win_over_the_preset(tmp_path):
    args = train.parse_args(["--name", "x", "--checkpoint_dir", str(tmp_path), "--preset", "release", "--h", "256",
                             "--kd_mode", "kl"])
    assert (args.h, args.w, args.kd_mode, args.head_input) == (256, 384, "kl", "pooled")


def test_a_preset_is_refused_for_a_teacher(tmp_path):
    with pytest.raises(UserError, match="--preset release describes the student recipe"):
        train.parse_args(["--name", "x", "--checkpoint_dir", str(tmp_path), "--preset", "release", "--model",
                          "mccg_convnext_atto"])


@pytest.mark.parametrize("argv, attribute, value", [
    (["--fp16"], "amp", True),
    (["--autocast"], "amp", True),
    (["--optimizer", "AdamLion"], "optimizer", "adamlion"),
    (["--optimizer", "SGD"], "optimizer", "sgd"),
    (["--dataset", "sue", "--altitude", "150"], "dataset", "sues"),
    (["--views", "3", "--extra_Google"], "extra_Google", True),
    (["--no-autoaugment"], "DA", False),
])
def test_original_spellings_keep_their_meaning(tmp_path, argv, attribute, value):
    args = train.parse_args(["--name", "x", "--checkpoint_dir", str(tmp_path), *argv])
    assert getattr(args, attribute) == value


@pytest.mark.parametrize("flag", sorted(REFUSED_FLAGS))
def test_original_flags_that_cannot_keep_their_meaning_are_refused_naming_what_to_use(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--name", "x", "--checkpoint_dir", str(tmp_path), f"{flag}=1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {flag} {REFUSED_FLAGS[flag]}"
    assert not (tmp_path / "x").exists()


def test_frozen_bn_freeze_holds_the_statistics_of_frozen_layers_only():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4))
    net[1].requires_grad_(False)
    net.train()
    assert hold_frozen_batchnorm(net) == 1
    assert not net[1].training and net[2].training and net[0].training


@pytest.mark.slow
def test_frozen_bn_freeze_keeps_the_backbone_statistics_through_phase_one(university_root, tmp_path):
    common = ("--epochs", "1", "--bigradual_n1", "1", "--bigradual_n2", "1")
    assert train.main(base_args(university_root, tmp_path, "held", *common, "--frozen_bn", "freeze")) == 0
    assert train.main(base_args(university_root, tmp_path, "updated", *common)) == 0
    held, updated = state(tmp_path / "held"), state(tmp_path / "updated")
    backbone_means = [k for k in held if k.startswith("backbone.") and k.endswith("running_mean")]
    head_means = [k for k in held if k.startswith("head.") and k.endswith("running_mean")]
    assert backbone_means and head_means
    assert all(torch.equal(held[k], torch.zeros_like(held[k])) for k in backbone_means)  # as built
    assert all(not torch.equal(updated[k], torch.zeros_like(updated[k])) for k in backbone_means)
    assert all(not torch.equal(held[k], torch.zeros_like(held[k])) for k in head_means)  # the head trains


@pytest.mark.slow
def test_lion_schedule_start_delays_only_lions_milestones(university_root, tmp_path):
    args = base_args(university_root, tmp_path, "late", "--epochs", "4", "--steps", "1", "--lr", "0.006",
                     "--bigradual_n1", "0", "--bigradual_n2", "0", "--lion_schedule_start", "2")
    assert train.main(args) == 0
    with open(tmp_path / "late" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    adam = [float(r["lr_adam"]) for r in rows]
    lion = [float(r["lr_lion"]) for r in rows]
    assert adam == pytest.approx([0.006, 0.0006, 0.0006, 0.0006])
    # Lion's scheduler steps only after epoch index 2, so its milestone 1 arrives for the 4th epoch.
    assert lion == pytest.approx([0.001, 0.001, 0.001, 0.0001])


@pytest.mark.slow
def test_a_run_from_random_weights_says_so_in_the_log_and_opts(university_root, tmp_path):
    assert train.main(base_args(university_root, tmp_path, "random", "--epochs", "1")) == 0
    log = (tmp_path / "random" / "train.log").read_text()
    assert "WARNING bicrossnet_bnext_tiny starts from RANDOM backbone weights" in log
    warnings = yaml.safe_load((tmp_path / "random" / "opts.yaml").read_text())["warnings"]
    assert len(warnings) == 1 and "--backbone_weights" in warnings[0]
    args = train.parse_args(["--name", "x", "--checkpoint_dir", str(tmp_path), "--backbone_weights", "w.pth.tar"])
    assert start_warnings(args) == []
