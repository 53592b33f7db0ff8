"""Packed model files: sign bit packing, exact reload of BNext-T students, sizes, and refusals."""
import contextlib
import io
import math
import os

import pytest
import torch

import export
from models import bitpacked, build_model
from models.binary import HardBinaryConv, ReCUConv2d
from models.bnext import BNEXT_CHANNELS
from utils.files import save_checkpoint
from utils.errors import UserError
from runs.packed import (FORMAT_VERSION, package_checksum, signs_restore_exactly, binary_weight_bytes, export_packed, load_packed,
                           pack_signs, packed_bytes, serialized_bytes, unpack_signs)
from helpers.errors import one_line_error
from helpers.evaluation_cli import SIZE, write_run

STUDENT = "bicrossnet_bnext_tiny"
NUM_CLASSES = 7
REFERENCE_SIZE = 32  # the --speed_reference table's input, other than the run's SIZE
META = {"h": SIZE, "w": SIZE, "dataset": "university", "altitude": None}


def random_signs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


@pytest.mark.parametrize("shape", [(3, 5, 3, 3), (1,), (7,), (9,), (2, 13), (16, 4, 1, 1)])
def test_pack_unpack_round_trip(shape):
    signs = random_signs(shape, seed=len(shape))
    bits, packed_shape = pack_signs(signs)
    n = math.prod(shape)
    assert packed_shape == shape
    assert bits.dtype == torch.uint8 and bits.numel() == math.ceil(n / 8) == packed_bytes(n)
    assert torch.equal(unpack_signs(bits, shape), signs)


def test_bit_order_is_most_significant_first_and_padding_is_zero():
    signs = torch.tensor([1, -1, -1, -1, -1, -1, -1, 1, 1, 1, -1], dtype=torch.float32)
    bits, _ = pack_signs(signs)
    assert bits.tolist() == [0b10000001, 0b11000000]
    assert unpack_signs(torch.tensor([0b01000000], dtype=torch.uint8), (2,)).tolist() == [-1, 1]


@pytest.mark.parametrize("values", [[1.0, 0.0, -1.0], [0.5, -1.0]])
def test_pack_refuses_values_other_than_signs(values):
    with pytest.raises(ValueError, match="exactly"):
        pack_signs(torch.tensor(values))


def test_unpack_refuses_wrong_byte_count():
    with pytest.raises(ValueError, match="need 2 uint8 bytes"):
        unpack_signs(torch.zeros(1, dtype=torch.uint8), (9,))


def randomize(model, seed=0):
    """Random full-precision state (BN statistics, affine, PReLU slopes, biases) so features depend on all of it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not name.endswith(("temperature", "tau", "binary_conv.weight")):
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5 if name.endswith("running_var")
                             else torch.randn(tensor.shape, generator=g) * 0.2)
    return model.eval()


def features(model, seed=1):
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model(x)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A BNext-T student run with random weights exported by the CLI: (model, packed path, features, output)."""
    root = tmp_path_factory.mktemp("runs")
    model = randomize(build_model(STUDENT, NUM_CLASSES))
    expected = features(model)  # before exporting: the export must leave the model as it was
    write_run(root / "student", STUDENT, state_dict=model.state_dict(),
              model_options={"block": 2, "binarizer": "bnext"}, num_classes=NUM_CLASSES)
    write_run(root / "teacher", "mccg_convnext_atto", model_options={"block": 2}, num_classes=NUM_CLASSES)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        export.main(["--name", "student", "--checkpoint_dir", str(root), "--teacher", "teacher",
                     "--speed_reference", "mccg_convnext_atto", "--speed_size", str(REFERENCE_SIZE)])
    assert torch.equal(features(model), expected)
    return model, root / "student" / "last_packed.pt", expected, output.getvalue()


@pytest.mark.slow
def test_packed_bnext_tiny_reproduces_features_exactly(exported):
    model, path, expected, _ = exported
    packed, meta = load_packed(path)
    assert not packed.training
    assert torch.equal(features(packed), expected)
    assert expected.abs().max() > 0 and expected.std() > 0
    assert {k: meta[k] for k in ("model", "h", "w", "dataset", "altitude", "num_classes")} == {
        "model": STUDENT, "h": SIZE, "w": SIZE, "dataset": "university", "altitude": None, "num_classes": NUM_CLASSES}
    package = torch.load(path, weights_only=True)
    assert package["latent"] == {}
    assert not any(k.endswith("binary_conv.weight") for k in package["state"])


def bnext_binary_weights(size):
    """Binary conv weights of BNext counted from the design's channel list: per block a 3x3 unit at the
    input width, then one 1x1 unit, or two (each in -> in) where the width doubles."""
    ch = BNEXT_CHANNELS[size]
    return sum(9 * ch[i - 1] ** 2 + (2 if ch[i] != ch[i - 1] else 1) * ch[i - 1] ** 2 for i in range(1, len(ch)))


@pytest.mark.slow
def test_packed_file_stores_binary_weights_at_one_bit(exported):
    model, path, _, _ = exported
    n = bnext_binary_weights("tiny")
    assert abs(n - 28.25e6) < 0.01e6  # docs/method.md §2.1: BNext-T has 28.25 M binary conv weights
    sizes = binary_weight_bytes(model)
    assert sizes == {"binary_params": n, "float32_bytes": 4 * n, "packed_bytes": n // 8}
    assert sizes["float32_bytes"] == 32 * sizes["packed_bytes"]
    full_precision = sum(v.numel() * v.element_size() for k, v in model.state_dict().items()
                         if not k.endswith("binary_conv.weight"))
    file_size = os.path.getsize(path)
    # Packed bits + unchanged full-precision tensors; the rest is names and zip headers.
    assert n // 8 + full_precision <= file_size <= n // 8 + full_precision + 512 * 1024
    assert serialized_bytes(model.state_dict()) > 6 * file_size


@pytest.mark.slow
def test_packed_recu_student_reproduces_features_exactly(tmp_path):
    model = randomize(build_model(STUDENT, NUM_CLASSES, binarizer="recu"), seed=3)
    dead = model.backbone.feature[3].FFN.binary_conv
    with torch.no_grad():
        dead.weight[5] = 0.1  # equal latents: the rounded channel mean exceeds 0.1, so the forward is all -1
    assert dead.binary_weight()[5].eq(-1).all()
    path = tmp_path / "recu.pt"
    export_packed(model, STUDENT, {"binarizer": "recu"}, NUM_CLASSES, META, path)
    latent = torch.load(path, weights_only=True)["latent"]
    assert list(latent) == ["backbone.feature.3.FFN.binary_conv"]  # +-1 latents would give that channel +1
    packed, _ = load_packed(path)
    assert torch.equal(features(packed), features(model))


def test_sign_latent_restores_each_binarizer():
    recu = ReCUConv2d(8, 4, 3)
    assert signs_restore_exactly(recu, recu.binary_weight().detach())
    # A channel of equal +-1 latents standardizes to zeros, whose sign is +1: all -1 cannot come back.
    all_negative = torch.ones(4, 8, 3, 3)
    all_negative[0] = -1
    assert not signs_restore_exactly(recu, all_negative)
    conv = HardBinaryConv(8, 4, 3, temperature=0.0)
    assert signs_restore_exactly(conv, conv.binary_weight().detach())
    hot = HardBinaryConv(8, 4, 3, temperature=2.0)
    with torch.no_grad():
        hot.weight.copy_(random_signs(hot.weight.shape) * 3)  # |w| / T >= 1: forward is +-1 ...
    signs = hot.binary_weight().detach()
    assert signs.abs().eq(1).all()
    assert not signs_restore_exactly(hot, signs)  # ... but latent +-1 would give +-0.5


def test_export_refuses_a_model_that_is_not_binary_yet(tmp_path):
    model = build_model(STUDENT, NUM_CLASSES, temperature=1.0).eval()
    path = tmp_path / "fp.pt"
    with pytest.raises(UserError, match=r"not exactly \+-1.*temperature 1\).*train with temperature 0") as err:
        export_packed(model, STUDENT, {"temperature": 1.0}, NUM_CLASSES, META, path)
    assert "--" not in str(err.value)  # the library names parameters; export.py speaks of flags
    assert not path.exists()


def tampered(exported, tmp_path, change):
    package = torch.load(exported[1], weights_only=True)
    change(package)
    package["checksum"] = package_checksum(package)  # crafted consistently, so the checks beyond the checksum run
    path = tmp_path / "tampered.pt"
    save_checkpoint(package, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    (lambda p: p["meta"].update(model="mccg_convnext_atto", model_options={}), "does not fit model 'mccg_convnext_atto'"),
    (lambda p: p["meta"]["model_options"].update(block=1), "does not match model"),
    (lambda p: p["meta"]["model_options"].update(binarizer="recu"), "does not match model"),
    (lambda p: p["meta"]["model_options"].update(binarizer="xnor"), "cannot build"),
    (lambda p: p["meta"].update(num_classes=NUM_CLASSES + 1), "does not match model"),
    (lambda p: p["meta"].update(model="resnet50"), "does not know"),
    (lambda p: p.update(format_version=FORMAT_VERSION + 1), "format version 2"),
    (lambda p: p.pop("format"), "not a packed BiCrossNet model"),
    (lambda p: p.pop("state"), "corrupted"),
    (lambda p: p["binary"]["backbone.feature.3.FFN.binary_conv"].update(bits=torch.zeros(3, dtype=torch.uint8)),
     "corrupted: binary weights of backbone.feature.3.FFN"),
    (lambda p: p["state"]["backbone.feature.3.FFN.binary_conv.temperature"].fill_(2.0),
     "restored forward weights of backbone.feature.3.FFN.binary_conv differ"),
])
def test_load_rejects_a_file_that_does_not_fit(exported, tmp_path, change, message):
    path = tampered(exported, tmp_path, change)
    with pytest.raises(UserError, match=message) as err:
        load_packed(path)
    assert str(path) in str(err.value)


@pytest.mark.slow
def test_load_rejects_truncated_foreign_and_missing_files(exported, tmp_path):
    data = exported[1].read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    checkpoint = tmp_path / "last.pth"
    torch.save({"model": exported[0].state_dict(), "epoch": 1}, checkpoint)
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    for path, message in ((truncated, "is unreadable"), (checkpoint, "not a packed BiCrossNet"),
                          (text, "is unreadable"), (tmp_path / "absent.pt", "does not exist")):
        with pytest.raises(UserError, match=message):
            load_packed(path)


@pytest.mark.slow
def test_export_cli_writes_verifies_and_reports_sizes(exported):
    model, path, _, out = exported
    assert f"wrote {path}" in out
    assert "max abs difference 0\n" in out
    weights_mib = serialized_bytes(model.state_dict()) / 2**20
    assert f"| {STUDENT}: float weights (state dict only) | {weights_mib:.2f} MiB |  |" in out
    assert f"| {STUDENT}: packed file | {os.path.getsize(path) / 2**20:.2f} MiB |" in out
    assert "| binary conv weights, packed | 3.37 MiB | 32x smaller |" in out
    assert "| teacher mccg_convnext_atto: float weights (state dict only) |" in out
    tables = out.split("speed on this CPU")[1:]
    assert len(tables) == 2 and f"{SIZE}x{SIZE}" in tables[0].splitlines()[0]
    engines = ("float", *bitpacked.ENGINE_NAMES) if bitpacked.available() else ("float",)
    check_speed_rows(tables[0], {f"packed student, {e} engine" for e in engines}, "teacher teacher")


@pytest.mark.slow
def test_export_cli_times_the_bitpacked_engines_against_a_reference_model(exported):
    """--speed_reference: the deployed engines (float only where the bit-packed ones do not build) at
    --speed_size against a random-weight network, ratios against it."""
    table = exported[3].split("speed on this CPU")[2]
    assert f"{REFERENCE_SIZE}x{REFERENCE_SIZE}" in table.splitlines()[0]
    engines = bitpacked.ENGINE_NAMES if bitpacked.available() else ("float",)
    check_speed_rows(table, {f"packed student, {e} engine" for e in engines}, "mccg_convnext_atto, random weights")


def check_speed_rows(table: str, students: set, reference: str) -> None:
    """The table lists exactly ``students`` and ``reference``, each ratio its rate over the reference's."""
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()
            if line.startswith("| ") and "network" not in line}
    assert set(rows) == students | {reference}
    assert rows[reference].endswith("| 1.00x |")
    reference_rate = float(rows[reference].split("|")[2])
    for line in rows.values():
        rate, ratio = float(line.split("|")[2]), float(line.split("|")[3].strip().rstrip("x"))
        # Rates print to 2 decimals: a large ratio recomputed from them agrees in relative terms only.
        assert rate > 0 and ratio == pytest.approx(rate / reference_rate, rel=0.01, abs=0.02)


def test_export_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--name", "missing", "--checkpoint_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize("flags, message", [(["--speed_reference", "resnet50"], "--speed_reference 'resnet50' is not a model"),
                                            (["--speed_size", "48"], "--speed_size must be a positive multiple of 32")])
def test_export_refuses_bad_speed_flags_before_reading_the_run(tmp_path, capsys, flags, message):
    assert message in one_line_error(capsys, export.main, ["--name", "missing", "--checkpoint_dir", tmp_path, *flags])
