"""Checkpoints of the original MCCG and BiCrossNet code: detection, exact conversion, run directories.

The fixtures are original-layout state dicts with deterministic random values, built from the
key/shape lists in fixtures/original_checkpoint_keys.json (6 classes, as the synthetic data has),
and BatchNorm statistics calibrated on random images. Features are checked against
:class:`OriginalForward`, a functional re-implementation of the original eval forward that keeps
its own structure (ZPool max-then-mean, branch order cw, hc, global, pooled BNext map, in-place
clamp of the 1x1 units' scales), not against this project's modules.
"""
import contextlib
import importlib.util
import io
import json
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import train
from training.trainer import load_teacher
from runs.convert import main as convert_main
from runs.original_formats import BICROSSNET_RELEASE, MCCG, convert_state, detect_format
from runs.checkpoints import load_run, load_trained_model
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
KEYS = ROOT / "tests" / "fixtures" / "original_checkpoint_keys.json"  # copy of shared/compat
NUM_CLASSES, SIZE = 6, 64
# Released BNext-T widths (stage_out_channel_tiny) and the original's eval output order.
BNEXT_TINY = [32, 64, 128, 128, 256, 256] + [512] * 6 + [1024] * 2
ORIGINAL_TO_OURS = [2, 0, 1]  # ours: global, cw, hc; original: cw, hc, global


# ------------------------------------------------------------------ the original forward, functionally

class OriginalForward:
    """Eval forward of the original ``build_convnext`` on a ``model_1``-stripped state dict.

    ``calibrate`` sets every BatchNorm's running statistics from the batch it sees (as training
    would), so random fixtures give activations of a realistic scale.
    """

    def __init__(self, view: dict, calibrate: bool = False):
        self.p, self.calibrate = dict(view), calibrate  # a copy: the 1x1 units clamp it in place

    def bn(self, x, key):
        if self.calibrate:
            dims = [d for d in range(x.dim()) if d != 1]
            self.p[key + ".running_mean"], self.p[key + ".running_var"] = x.mean(dims), x.var(dims, unbiased=False)
        p = self.p
        return F.batch_norm(x, p[key + ".running_mean"], p[key + ".running_var"], p[key + ".weight"],
                            p[key + ".bias"], False, 0.0, 1e-5)

    def __call__(self, x):
        if "convnext.norm.weight" in self.p:
            gap, part = self.convnext(x)
        else:
            gap, part = self.bnext(x)
        return self.head(gap, part)

    # MCCG: facebookresearch ConvNeXt, global = LN(GAP(map)), part = the map before that LN
    def ln_channels_first(self, x, key):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + 1e-6)
        return self.p[key + ".weight"][:, None, None] * x + self.p[key + ".bias"][:, None, None]

    def convnext(self, x):
        p, d = self.p, "convnext.downsample_layers."
        for i in range(4):
            if i == 0:
                x = self.ln_channels_first(F.conv2d(x, p[d + "0.0.weight"], p[d + "0.0.bias"], stride=4), d + "0.1")
            else:
                x = self.ln_channels_first(x, f"{d}{i}.0")
                x = F.conv2d(x, p[f"{d}{i}.1.weight"], p[f"{d}{i}.1.bias"], stride=2)
            j = 0
            while f"convnext.stages.{i}.{j}.gamma" in p:
                s = f"convnext.stages.{i}.{j}."
                y = F.conv2d(x, p[s + "dwconv.weight"], p[s + "dwconv.bias"], padding=3, groups=x.shape[1])
                y = F.layer_norm(y.permute(0, 2, 3, 1), (x.shape[1],), p[s + "norm.weight"], p[s + "norm.bias"], 1e-6)
                y = F.linear(F.gelu(F.linear(y, p[s + "pwconv1.weight"], p[s + "pwconv1.bias"])),
                             p[s + "pwconv2.weight"], p[s + "pwconv2.bias"])
                x = x + (p[s + "gamma"] * y).permute(0, 3, 1, 2)
                j += 1
        gap = F.layer_norm(x.mean([-2, -1]), (x.shape[1],), p["convnext.norm.weight"], p["convnext.norm.bias"], 1e-6)
        return gap, x

    # BiCrossNet student: BNext-T whose forward returns the pooled map as "part"
    def unit(self, f, inp, kind, stride):
        p = self.p
        residual = F.prelu(inp, p[f + "activation1.weight"]) if kind == "attention" else inp
        if stride == 2:
            residual = F.avg_pool2d(residual, 2, 2)
        x = inp + p[f + "move.bias"]
        replace = x.clamp(-1.5, 1.5)  # HardSign keeps its straight-through expression in eval
        x = (x.div(p[f + "binary_activation.temperature"].clamp(min=1e-8)).clamp(-1, 1).sign() - replace) + replace
        w, t = p[f + "binary_conv.weight"], p[f + "binary_conv.temperature"]
        weight = w.sign() if t < 1e-7 else (w / t.clamp(min=1e-8)).clamp(-1, 1)
        x = F.conv2d(x, weight, stride=stride, padding=w.shape[-1] // 2)
        x = F.prelu(self.bn(x, f + "norm1"), p[f + "activation2.weight"])
        if kind == "ffn_1x1":
            p[f + "scale"] = p[f + "scale"].clamp(0, 1)  # FFN_1x1: scale.data.clamp_(0, 1) in every forward
        inp = F.avg_pool2d(inp, 2, 2) if stride == 2 else inp
        mix = p[f + "scale"] * inp + (1 - p[f + "scale"]) * x
        se = F.adaptive_avg_pool2d(mix, 1)
        se = F.conv2d(F.relu(F.conv2d(se, p[f + "se.se.1.weight"], p[f + "se.se.1.bias"])),
                      p[f + "se.se.3.weight"], p[f + "se.se.3.bias"])
        x = torch.sigmoid(se) * x
        if kind == "attention":
            x = x * residual
        return self.bn(x, f + "norm2") + residual

    def bnext(self, x):
        p, ch = self.p, BNEXT_TINY
        x = self.bn(F.conv2d(x, p["convnext.feature.0.conv1.weight"], stride=2, padding=1), "convnext.feature.0.bn1")
        for i in range(1, len(ch)):
            f = f"convnext.feature.{i}."
            stride = 2 if ch[i - 1] != ch[i] and ch[i] != ch[1] else 1
            x = self.unit(f + "Attention.", x, "attention" if i % 2 == 0 and i > 1 else "ffn_3x3", stride)
            if ch[i - 1] == ch[i]:
                x = self.unit(f + "FFN.", x, "ffn_1x1", 1)
            else:
                x = torch.cat([self.unit(f + "FFN_1.", x, "ffn_1x1", 1), self.unit(f + "FFN_2.", x, "ffn_1x1", 1)], 1)
        x = F.adaptive_avg_pool2d(F.prelu(x, p["convnext.prelu.weight"]), 1)
        return x.mean([-2, -1]), x

    # MCCG head
    def gate(self, name, t):
        z = torch.cat([t.max(1)[0].unsqueeze(1), t.mean(1).unsqueeze(1)], dim=1)  # ZPool: max, then mean
        z = F.conv2d(z, self.p[f"tri_layer.{name}.conv.conv.weight"], padding=3)
        return t * torch.sigmoid(self.bn(z, f"tri_layer.{name}.conv.bn"))

    def class_block(self, name, x):
        x = F.linear(x, self.p[f"{name}.add_block.0.weight"], self.p[f"{name}.add_block.0.bias"])
        return self.bn(x, f"{name}.add_block.1")

    def head(self, gap, part):
        cw = self.gate("cw", part.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)
        hc = self.gate("hc", part.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)
        parts = [self.class_block(f"classifier_mcb{i + 1}", m.mean([-2, -1])) for i, m in enumerate((cw, hc))]
        return torch.cat([torch.stack(parts, 2), self.class_block("classifier1", gap)[:, :, None]], 2)


# ------------------------------------------------------------------ fixtures

def random_value(key, shape, g):
    """Deterministic values of plausible scale for one original key."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros((), dtype=torch.int64)
    if key.endswith("binary_conv.temperature"):  # mostly sign(w); every 4th layer the clamp(w / T) path
        return torch.full(shape, 0.05 if zlib.crc32(key.encode()) % 4 == 0 else 0.0)
    if key.endswith(("binary_activation.temperature", "running_var")):
        return torch.ones(shape)
    if key.endswith(".scale"):  # 1x1 units: partly outside [0, 1], which the original clamps in eval
        low, high = (-0.2, 1.2) if ".FFN" in key else (0.0, 1.0)
        return torch.empty(shape).uniform_(low, high, generator=g)
    if key.endswith("gamma"):
        return torch.empty(shape).uniform_(0.1, 0.5, generator=g)
    x = torch.randn(shape, generator=g)
    if len(shape) > 1:
        return x / torch.tensor(shape[1:]).prod().sqrt()
    if key.endswith("weight"):  # norms and PReLU slopes
        return 1 + 0.1 * x if "activation" not in key and "prelu" not in key else 0.25 + 0.05 * x
    return 0.1 * x


def original_view(fmt, seed=0):
    """One network's state dict (keys without ``model_1.``), BatchNorm statistics calibrated."""
    g = torch.Generator().manual_seed(seed)
    view = {}
    for key, shape in json.loads(KEYS.read_text())["formats"][fmt]["keys"]:
        key, shape = key[len("model_1."):], [NUM_CLASSES if s == 701 else s for s in shape]
        view[key] = random_value(key, shape, g)
    calibrated = OriginalForward(view, calibrate=True)
    calibrated(torch.randn(8, 3, SIZE, SIZE, generator=g))
    view.update({k: v for k, v in calibrated.p.items() if k.endswith(("running_mean", "running_var"))})
    return view


def two_view(view):
    return {"model_1." + k: v for k, v in view.items()}


@pytest.fixture(scope="module")
def teacher_view():
    return original_view("mccg_two_view")


@pytest.fixture(scope="module")
def student_view():
    return original_view("bicrossnet_student")


@pytest.fixture(scope="module")
def teacher_file(teacher_view, tmp_path_factory):
    """``net_119.pth`` as the original train.py saves it, in its ``./model/<name>/`` folder."""
    path = tmp_path_factory.mktemp("model") / "net_119.pth"
    torch.save(two_view(teacher_view), path)
    return path


@pytest.fixture(scope="module")
def student_file(student_view, tmp_path_factory):
    path = tmp_path_factory.mktemp("student") / "net_199.pth"
    torch.save(two_view(student_view), path)
    return path


def images(n=3, size=SIZE, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_same_features(model, view, x, tol=1e-4):
    with torch.no_grad():
        ours, original = model.eval()(x), OriginalForward(view)(x)
    torch.testing.assert_close(ours, original[:, :, ORIGINAL_TO_OURS], rtol=tol, atol=tol)


def convert_cli(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert convert_main([str(a) for a in argv]) == 0
    return out.getvalue()


# ------------------------------------------------------------------ detection and refusal

@pytest.mark.slow
def test_each_layout_is_detected(teacher_view, student_view):
    three_view = {**two_view(teacher_view), **{"model_2." + k: v for k, v in teacher_view.items()}}
    assert detect_format(two_view(teacher_view)) == MCCG
    assert detect_format(three_view) == MCCG
    assert detect_format(teacher_view) == MCCG  # a bare build_convnext state dict
    assert detect_format(two_view(student_view)) == BICROSSNET_RELEASE


@pytest.mark.slow
def test_unknown_layout_is_refused_in_one_line_listing_the_layouts(teacher_view):
    with pytest.raises(UserError) as err:
        detect_format({"features.0.weight": torch.zeros(1)}, "odd.pth")
    message = str(err.value)
    assert "\n" not in message and "odd.pth" in message and MCCG in message and BICROSSNET_RELEASE in message
    with pytest.raises(UserError, match="this project's network layout"):
        detect_format({"backbone.stem.weight": torch.zeros(1), "head.fc.weight": torch.zeros(1)})
    with pytest.raises(UserError, match=f"not in the {BICROSSNET_RELEASE} layout: it is {MCCG}"):
        convert_state(two_view(teacher_view), BICROSSNET_RELEASE)
    damaged = {k: v for k, v in two_view(teacher_view).items() if "classifier1.classifier" not in k}
    with pytest.raises(UserError, match=f"has the {MCCG} layout but is incomplete"):
        convert_state(damaged)


@pytest.mark.slow
def test_cli_refuses_an_unknown_file_and_an_existing_run(tmp_path, teacher_file, capsys):
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "other.pth")
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "opts.yaml").write_text("model: x\n")
    for argv in ([tmp_path / "other.pth", "--name", "new"], [teacher_file, "--name", "taken"]):
        with pytest.raises(SystemExit):
            convert_main([str(a) for a in argv] + ["--checkpoint_dir", str(tmp_path / "runs")])
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "runs" / "new").exists()


# ------------------------------------------------------------------ exactness

@pytest.mark.slow
def test_mccg_teacher_features_equal_the_original(teacher_view):
    converted = convert_state(two_view(teacher_view))
    assert (converted.model_name, converted.num_classes, converted.notes) == ("mccg_convnext_tiny", NUM_CLASSES, ())
    assert converted.model_options == {"block": 2, "head_input": "spatial"}
    assert_same_features(converted.model, teacher_view, images())


@pytest.mark.slow
def test_three_view_converts_the_satellite_and_drone_network(teacher_view):
    shared = {**two_view(teacher_view), **{"model_2." + k: v for k, v in teacher_view.items()}}
    street = {**two_view(teacher_view), **{"model_2." + k: v.clone() + 1 for k, v in teacher_view.items()}}
    reference = convert_state(two_view(teacher_view)).model.state_dict()
    for state, notes in ((shared, 0), (street, 1)):
        converted = convert_state(state)
        assert converted.views == 3  # its classifiers saw street images: it may teach a three-view student
        assert len(converted.notes) == notes and all("model_2" in n for n in converted.notes)
        assert all(torch.equal(v, reference[k]) for k, v in converted.model.state_dict().items())


@pytest.mark.slow
def test_released_student_features_equal_the_original(student_view):
    converted = convert_state(two_view(student_view))
    assert converted.model_name == "bicrossnet_bnext_tiny" and converted.notes == ()
    assert converted.model_options == {"block": 2, "head_input": "pooled", "binarizer": "bnext", "temperature": 0.0}
    clamped = [k for k in student_view if ".FFN" in k and k.endswith(".scale")]
    assert len(clamped) == 18 and any((student_view[k] > 1).any() for k in clamped)
    stored = converted.model.state_dict()
    assert all(torch.equal(stored["backbone." + k[len("convnext."):]], student_view[k].clamp(0, 1)) for k in clamped)
    assert_same_features(converted.model, student_view, images(size=32))


@pytest.mark.slow
def test_student_3x3_scales_outside_0_1_are_used_as_stored(student_view):
    # The original's 3x3 units use their mixing scales unclamped in eval mode; so does this project's forward.
    view = dict(student_view)
    view["convnext.feature.4.Attention.scale"] = view["convnext.feature.4.Attention.scale"] + 0.5
    converted = convert_state(two_view(view))
    assert converted.notes == ()
    assert_same_features(converted.model, view, images(size=32))


# ------------------------------------------------------------------ run directories and loading

@pytest.mark.slow
def test_cli_writes_a_run_that_load_run_loads(student_file, student_view, tmp_path):
    stdout = convert_cli(student_file, "--name", "released", "--checkpoint_dir", tmp_path,
                         "--dataset", "sues", "--altitude", 150)
    assert "bicrossnet_bnext_tiny" in stdout and "note:" not in stdout
    opts = yaml.safe_load((tmp_path / "released" / "opts.yaml").read_text())
    assert (opts["h"], opts["w"], opts["dataset"], opts["altitude"], opts["views"]) == (384, 384, "sues", 150, 2)
    checkpoint = torch.load(tmp_path / "released" / "last.pth", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["num_classes"]) == (199, NUM_CLASSES)
    assert_same_features(load_run(tmp_path / "released"), student_view, images(size=32))


@pytest.mark.slow
def test_load_run_and_teacher_path_accept_original_files_and_folders(teacher_file, teacher_view):
    folder = teacher_file.parent
    (folder / "opts.yaml").write_text(yaml.safe_dump({"nclasses": NUM_CLASSES, "views": 2, "h": 224, "w": 224}))
    torch.save({"model_1.classifier1.add_block.0.weight": torch.zeros(1)}, folder / "net_095.pth")
    try:
        model, opts, checkpoint = load_trained_model(folder)  # the highest epoch, as the original test.py
        assert (opts["model"], opts["h"], checkpoint["epoch"]) == ("mccg_convnext_tiny", 224, 119)
        assert_same_features(load_run(teacher_file), teacher_view, images(n=2))
        teacher = load_teacher(str(teacher_file), NUM_CLASSES, torch.device("cpu"), _Logger())
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        with pytest.raises(UserError, match="unknown checkpoint layout"):
            load_trained_model(folder, which_epoch=95)
    finally:
        (folder / "opts.yaml").unlink()
        (folder / "net_095.pth").unlink()


@pytest.mark.slow
def test_a_converted_run_cannot_be_resumed_and_says_what_it_can_do(student_file, tmp_path, capsys):
    convert_cli(student_file, "--name", "released", "--checkpoint_dir", tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--name", "released", "--checkpoint_dir", str(tmp_path), "--resume"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "holds weights only, no training state to resume" in err and "--teacher_path" in err


class _Logger:
    def info(self, *args):
        pass


@pytest.mark.slow
def test_converted_teacher_evaluates_with_test_py(teacher_file, university_root, tmp_path):
    convert_cli(teacher_file, "--name", "mccg", "--checkpoint_dir", tmp_path, "--h", SIZE, "--w", SIZE)
    spec = importlib.util.spec_from_file_location("bicrossnet_test_cli", ROOT / "test.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert cli.main(["--name", "mccg", "--checkpoint_dir", str(tmp_path), "--test_dir",
                         str(university_root / "test"), "--device", "cpu", "--num_workers", "0"]) == 0
    assert out.getvalue().count(" AP:") == 2
    results = json.loads((tmp_path / "mccg" / "results.json").read_text())
    assert {entry["epoch"] for entry in results.values()} == {119}
