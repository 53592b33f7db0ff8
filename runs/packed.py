"""1-bit storage of binary networks: sign bit packing and the packed model file.

A PyTorch checkpoint of a BNN stores every binary weight as a float32 latent weight, so the
32x saving of 1-bit weights never reaches disk. A packed model file stores each
:class:`~models.binary.BinaryConv2d`'s *forward* weight (exactly +-1) as one bit per element
and everything else (full-precision parameters and buffers) unchanged.

File format (``torch.save`` of a dict made only of containers, strings, numbers and tensors, so
it loads with ``weights_only=True``)::

    format          "bicrossnet-packed"
    format_version  1
    meta            {"model", "model_options", "num_classes", "h", "w", "dataset", "altitude", ...}
    binary          {conv module name: {"bits": uint8 tensor, "shape": [out, in, kh, kw]}}
    latent          {conv module name: float tensor}   usually empty, see below
    state           {state-dict key: tensor} for every key except the binary convs' ``weight``
    checksum        SHA-256 (hex) of everything above (see :func:`package_checksum`)

The checksum catches a file changed after export (a flipped bit in the weights, an edited meta):
loading recomputes it and refuses a file that does not match. Files exported before the
checksum existed have none; they still load, with a warning that changes to them cannot be
detected (export the run again to add one).

Bits: element ``i`` of the flattened weight is bit ``7 - i % 8`` (most significant first) of
byte ``i // 8``; 1 means +1, 0 means -1; the last byte is zero-padded.

On loading, a binary conv's latent weight is set to its +-1 forward weight, which every
binarizer maps back to itself: ``HardBinaryConv`` takes its sign (or ``clamp(w/T, -1, 1)`` with
``T <= 1``), and ``ReCUConv2d`` standardizes each output channel (``w - mean`` keeps the sign of
every +-1 entry; the quantile clamp is positive) before the sign. Export checks this on each
layer; where it fails the latent weight of that layer is stored as it is in ``latent``, so
loading is always exact. (ReCU: a channel of equal latent weights, whose rounded mean can exceed
them, binarizes to all -1, while equal +-1 latents give +1; BNext: a temperature above 1.)
"""
import copy
import hashlib
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Dict, Mapping, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from utils.errors import UserError
from utils.files import read_torch_file, save_checkpoint

from models import bitpacked, build_model, list_models
from models._helpers import load_model_state
from models.binary import BinaryConv2d

from .checkpoints import check_network_entries

FORMAT = "bicrossnet-packed"
FORMAT_VERSION = 1
# Inference engines of load_packed: the training network, or the bit-packed CPU engines (exact, fused).
ENGINES = ("float", *bitpacked.ENGINE_NAMES)
# Options that make a builder read weights from elsewhere; a packed file carries its own weights.
WEIGHT_SOURCE_OPTIONS = ("backbone_weights", "pretrained")

PathLike = Union[str, os.PathLike]


def pack_signs(tensor: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """``(uint8 tensor of ceil(n/8) bytes, shape)`` for a tensor whose values are all +-1."""
    flat = tensor.detach().reshape(-1).cpu()
    if not bool((flat.abs() == 1).all()):
        raise ValueError("pack_signs needs a tensor whose values are exactly +1 or -1")
    bits = np.packbits((flat > 0).numpy(), bitorder="big")
    return torch.from_numpy(bits), tuple(tensor.shape)


def unpack_signs(packed: torch.Tensor, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`pack_signs`: a tensor of ``shape`` holding +-1."""
    count = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.numel() != packed_bytes(count):
        raise ValueError(f"{count} signs need {packed_bytes(count)} uint8 bytes, got {packed.numel()} {packed.dtype}")
    signs = np.unpackbits(packed.cpu().numpy().reshape(-1), count=count, bitorder="big").astype(np.float32)
    signs *= 2  # in place in numpy: one pass each, several times faster than the torch expression here
    signs -= 1
    return torch.from_numpy(signs).to(dtype).reshape(tuple(shape))


def packed_bytes(count: int) -> int:
    """Bytes that ``count`` packed signs take."""
    return (count + 7) // 8


def _binary_convs(model: nn.Module) -> Dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, BinaryConv2d)}


def binary_weight_bytes(model: nn.Module) -> Dict[str, int]:
    """Binary conv weights of ``model``: element count, bytes as float32, bytes when packed."""
    counts = [m.weight.numel() for m in _binary_convs(model).values()]
    return {"binary_params": sum(counts), "float32_bytes": 4 * sum(counts),
            "packed_bytes": sum(packed_bytes(n) for n in counts)}


def serialized_bytes(obj) -> int:
    """Size of ``torch.save(obj)`` (e.g. a bare state dict, to size a float checkpoint's weights)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


def _describe_non_binary(name: str, conv: nn.Module) -> str:
    temperature = getattr(conv, "temperature", None)
    return f"{name} (temperature {temperature.item():g})" if temperature is not None else name


@torch.no_grad()
def signs_restore_exactly(conv: nn.Module, signs: torch.Tensor) -> bool:
    """Does latent weight = ``signs`` give back the forward weight ``signs``? (checked on a copy)"""
    probe = copy.deepcopy(conv).eval()
    probe.weight.copy_(signs)
    return torch.equal(probe.binary_weight(), signs)


@torch.no_grad()
def export_packed(model: nn.Module, model_name: str, model_options: Mapping, num_classes: int,
                  extra_meta: Mapping, path: PathLike) -> dict:
    """Write ``model`` as a packed file at ``path`` (atomically); returns the recorded meta.

    ``extra_meta`` must hold the input size ``h`` and ``w``; ``dataset`` and ``altitude`` default
    to None. Raises :class:`UserError` if a binary conv's forward weights are not exactly +-1.
    """
    missing = [key for key in ("h", "w") if key not in extra_meta]
    if missing:
        raise ValueError(f"extra_meta needs the input size: missing {', '.join(missing)}")
    convs = _binary_convs(model)
    # Eval-mode copies: in train mode HardBinaryConv clamps its latent weights in place.
    forward = {name: copy.deepcopy(m).eval().binary_weight() for name, m in convs.items()}
    not_binary = [name for name, w in forward.items() if not bool((w.abs() == 1).all())]
    if not_binary:
        raise UserError(
            f"model {model_name!r} is not binary yet: {len(not_binary)} of {len(convs)} binary convolutions have "
            f"forward weights that are not exactly +-1, e.g. {_describe_non_binary(not_binary[0], convs[not_binary[0]])}; "
            f"train with temperature 0 (the default), or anneal the temperature (temperature_decay) until it is "
            f"below 1e-7, then export again")
    binary_keys = {f"{name}.weight" for name in convs}
    package = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": {"dataset": None, "altitude": None, **extra_meta, "model": model_name,
                 "model_options": {k: v for k, v in model_options.items() if k not in WEIGHT_SOURCE_OPTIONS},
                 "num_classes": int(num_classes)},
        "binary": {},
        "latent": {},
        "state": {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in binary_keys},
    }
    for name, signs in forward.items():
        bits, shape = pack_signs(signs)
        package["binary"][name] = {"bits": bits, "shape": list(shape)}
        if not signs_restore_exactly(convs[name], signs):
            package["latent"][name] = convs[name].weight.detach().cpu().clone()
    package["checksum"] = package_checksum(package)
    save_checkpoint(package, path)
    return package["meta"]


def _tensor_bytes(value) -> bytes:
    """A tensor's dtype, shape and raw bytes (anything else: its repr), for the checksum."""
    if not torch.is_tensor(value) or value.is_meta:
        return repr(value).encode()
    flat = value.detach().cpu().contiguous().reshape(-1)
    return f"{value.dtype}{tuple(value.shape)}".encode() + flat.view(torch.uint8).numpy().tobytes()


def package_checksum(package: Mapping) -> str:
    """SHA-256 of a package's format, meta, packed bits, latent weights and state, in a fixed order."""
    digest = hashlib.sha256()
    head = {key: package.get(key) for key in ("format", "format_version", "meta")}
    digest.update(json.dumps(head, sort_keys=True, default=repr).encode())
    for section in ("binary", "latent", "state"):
        entries = package.get(section)
        if not isinstance(entries, dict):  # a malformed file: refused by the layout check after this
            digest.update(f"\0{section}\0{entries!r}".encode())
            continue
        for name in sorted(entries, key=str):
            entry = entries[name]
            digest.update(f"\0{section}\0{name}\0".encode())
            if section == "binary" and isinstance(entry, dict):
                digest.update(json.dumps(entry.get("shape"), default=repr).encode() + _tensor_bytes(entry.get("bits")))
            else:
                digest.update(_tensor_bytes(entry))
    return digest.hexdigest()


def _check_checksum(package: dict, path: Path) -> None:
    stored = package.get("checksum")
    if stored is None:
        warnings.warn(f"{path} has no checksum (exported before checksums were stored), so changes to it cannot be "
                      f"detected; export the run again to add one", stacklevel=3)
    elif stored != package_checksum(package):
        raise UserError(f"{path} is corrupted or was modified after export: its contents do not match the checksum "
                        f"stored in it (export the run again)")


def _read_package(path: Path) -> dict:
    package = read_torch_file(path, "packed model file")
    if not isinstance(package, dict) or package.get("format") != FORMAT:
        raise UserError(f"{path} is not a packed BiCrossNet model (write one with export.py)")
    version = package.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(f"{path} has packed format version {version!r}; this code reads version {FORMAT_VERSION} "
                        f"(export the run again with this version of export.py)")
    meta = package.get("meta")
    layout_ok = (
        isinstance(meta, dict) and isinstance(meta.get("model"), str) and isinstance(meta.get("model_options"), dict)
        and isinstance(meta.get("num_classes"), int) and all(k in meta for k in ("h", "w"))
        and all(isinstance(package.get(k), dict) for k in ("binary", "latent", "state"))
        and all(isinstance(e, dict) and isinstance(e.get("bits"), torch.Tensor) and isinstance(e.get("shape"), list)
                for e in package["binary"].values())
    )
    if not layout_ok:
        raise UserError(f"{path} is a corrupted packed model file (its meta, binary or state entries are malformed)")
    _check_checksum(package, path)
    check_network_entries(meta, path)
    return package


def _build(meta: dict, path: Path) -> nn.Module:
    name = meta["model"]
    if name not in list_models():
        raise UserError(f"{path} holds model {name!r}, which this code does not know")
    try:
        return build_model(name, meta["num_classes"], **meta["model_options"])
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: cannot build {name!r} with options {meta['model_options']} ({err})") from None


def load_packed(path: PathLike, map_location="cpu", engine: str = "float") -> Tuple[nn.Module, dict]:
    """Rebuild the network of a packed file; returns ``(model in eval mode on map_location, meta)``.

    ``engine="float"``: the training network, whose features equal those of the exported network
    exactly. ``engine="bitpacked"``: an inference-only CPU network whose binary convolutions run
    on packed bits (:mod:`models.bitpacked`), with the same features bit for bit; ``engine="fused"``:
    the same with a fused full-precision tail, faster, features close but not equal. Where their
    C++ ops cannot be built they warn once and return the float network. A file that is
    missing, truncated, foreign, of another format version, or whose weights do not fit the
    model it names is a :class:`UserError`, and so is a file that is not a BNext student with
    ``engine="bitpacked"`` or ``"fused"``.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine != "float" and torch.device(map_location).type != "cpu":
        raise ValueError(f"the {engine} engine runs on the CPU, not on {map_location}")
    path = Path(path)
    package = _read_package(path)
    meta = package["meta"]
    model = _build(meta, path)
    convs = _binary_convs(model)
    if set(convs) != set(package["binary"]):
        missing = sorted(set(convs) - set(package["binary"]))
        extra = sorted(set(package["binary"]) - set(convs))
        raise UserError(f"{path} does not fit model {meta['model']!r}: binary convolutions missing from the file "
                        f"{missing[:3]}, unknown to the model {extra[:3]}")
    state = dict(package["state"])
    signs = {}
    for name, entry in package["binary"].items():
        weight = convs[name].weight
        if tuple(entry["shape"]) != tuple(weight.shape):
            raise UserError(f"{path} does not fit model {meta['model']!r}: {name} has shape {entry['shape']} in the "
                            f"file, {list(weight.shape)} in the model")
        try:
            signs[name] = unpack_signs(entry["bits"], entry["shape"], weight.dtype)
        except ValueError as err:
            raise UserError(f"{path} is corrupted: binary weights of {name}: {err}") from None
        state[f"{name}.weight"] = package["latent"].get(name, signs[name])
    load_model_state(model, state, path, meta["model"])
    model.eval()
    with torch.no_grad():
        wrong = [name for name, m in convs.items() if not torch.equal(m.binary_weight(), signs[name])]
    if wrong:
        raise UserError(f"{path} is corrupted: the restored forward weights of {wrong[0]} differ from its packed bits")
    if engine != "float":
        try:
            return bitpacked.convert(model, engine=engine), meta
        except ValueError as err:
            raise UserError(f"{path} holds {meta['model']!r}: {err}") from None
    return model.to(map_location), meta
