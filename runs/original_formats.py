"""State dicts written by the original code, recognised by their keys and mapped onto this project's networks.

MCCG (github mode-str/crossview) and the released BiCrossNet (github fedeloper/BiCrossNet) save
``torch.save(network.state_dict())`` of a ``two_view_net`` (keys ``model_1.*``) or a
``three_view_net`` (``model_1.*`` for satellite and drone, ``model_2.*`` for street and Google
images). Under ``model_1`` sit the backbone ``convnext.*`` (a facebookresearch ConvNeXt, or a
BNext in the BiCrossNet student despite the name), ``classifier1`` (global branch),
``tri_layer.{cw,hc}`` (triplet-attention gates) and ``classifier_mcb{1,2}`` (gated branches).
BiCrossNet's released teacher is an MCCG ``two_view_net``, so it is the ``mccg`` layout.
"""
import re
from typing import List, NamedTuple, Tuple

import torch

from utils.errors import UserError, first_line

from models import build_model
from models._helpers import StateDict, load_model_state
from models.binary import MIN_TEMPERATURE
from models.bnext import BNEXT_CHANNELS
from models.bnext import checkpoint_filter_fn as bnext_filter
from models.teacher import _convnext_filter

MCCG, BICROSSNET_RELEASE = "mccg", "bicrossnet_release"
FORMATS = {
    MCCG: "MCCG two_view_net/three_view_net on ConvNeXt, also BiCrossNet's released teacher "
          "(keys model_1.convnext.downsample_layers.*, model_1.classifier1.*, model_1.tri_layer.*)",
    BICROSSNET_RELEASE: "released BiCrossNet student on BNext "
                        "(keys model_1.convnext.feature.*, model_1.classifier1.*, model_1.tri_layer.*)",
}
# Input size each code base trains and tests at by default.
DEFAULT_SIZE = {MCCG: 256, BICROSSNET_RELEASE: 384}

VIEW_PREFIX, STREET_PREFIX, BACKBONE_PREFIX = "model_1.", "model_2.", "convnext."
_HEAD_MARKERS = ("classifier1.add_block.0.weight", "tri_layer.cw.conv.conv.weight")
_BACKBONE_MARKERS = {MCCG: "convnext.downsample_layers.0.0.weight",
                     BICROSSNET_RELEASE: "convnext.feature.0.conv1.weight"}
# ClassBlock children: original Sequential indices -> this project's names.
_CLASS_BLOCK = {"add_block.0.": "fc.", "add_block.1.": "bn.", "classifier.0.": "classifier."}
# Original gate names in this project's gate order (models.mccg: C-W first, then H-C).
_GATES = ("cw", "hc")
# facebookresearch ConvNeXt (stem width, depths) -> this project's teacher variant.
_CONVNEXT_VARIANTS = {(96, (3, 3, 9, 3)): "tiny", (96, (3, 3, 27, 3)): "small", (128, (3, 3, 27, 3)): "base"}
# BNext 1x1 units clamp their mixing scale in place in every forward, eval included.
_FFN_SCALE = re.compile(r"\.FFN(_[12])?\.scale$")


class Converted(NamedTuple):
    """An original checkpoint loaded into this project's network (eval mode, CPU)."""
    model: torch.nn.Module
    format: str
    model_name: str
    model_options: dict
    num_classes: int
    notes: Tuple[str, ...]  # where this project's forward can differ from the original's
    views: int  # 3 for a three_view_net (its classifiers saw street images), else 2


def unknown_layout(source, state: StateDict) -> UserError:
    """One line saying what the file holds and which layouts are expected."""
    keys = list(state)
    if any(k.startswith(("backbone.", "head.")) for k in keys):
        return UserError(f"{source} holds this project's network layout, not an original checkpoint; load it "
                         f"from its run directory (opts.yaml beside the checkpoint)")
    shown = ", ".join(keys[:3]) + (" …" if len(keys) > 3 else "")
    expected = "; ".join(f"{name}: {text}" for name, text in FORMATS.items())
    return UserError(f"{source} has an unknown checkpoint layout (keys {shown}); expected one of {expected}")


def view_state(state: StateDict) -> StateDict:
    """The satellite/drone network's entries without their ``model_1.`` prefix (a bare
    ``build_convnext`` state dict is taken as it is)."""
    if not any(k.startswith(VIEW_PREFIX) for k in state):
        return dict(state)
    return {k[len(VIEW_PREFIX):]: v for k, v in state.items() if k.startswith(VIEW_PREFIX)}


def detect_format(state: StateDict, source="checkpoint") -> str:
    """``mccg`` or ``bicrossnet_release`` from the keys; anything else is a one-line UserError."""
    view = view_state(state)
    if all(marker in view for marker in _HEAD_MARKERS):
        for name, marker in _BACKBONE_MARKERS.items():
            if marker in view:
                return name
    raise unknown_layout(source, state)


def _prefixed(state: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def map_head(view: StateDict, block: int) -> StateDict:
    """Classifiers in this project's branch order (global first), gates with their two input
    channels swapped: MCCG's ZPool stacks (max, mean), timm's SpatialAttn (mean, max)."""
    out = {}
    branches = ["classifier1"] + [f"classifier_mcb{i + 1}" for i in range(block)]
    for i, branch in enumerate(branches):
        for old, new in _CLASS_BLOCK.items():
            out.update({f"head.classifiers.{i}.{new}{k}": v for k, v in _prefixed(view, f"{branch}.{old}").items()})
    for i, gate in enumerate(_GATES[:block]):
        for k, v in _prefixed(view, f"tri_layer.{gate}.conv.").items():
            out[f"head.gates.{i}.gate.conv.{k}"] = v.flip(1) if k == "conv.weight" else v
    return out


def _convnext_variant(backbone: StateDict, source) -> str:
    width = backbone["downsample_layers.0.0.weight"].shape[0]
    depths = tuple(len({k.split(".")[2] for k in backbone if k.startswith(f"stages.{i}.")}) for i in range(4))
    variant = _CONVNEXT_VARIANTS.get((width, depths))
    if variant is None:
        known = ", ".join(f"{v} (width {w}, depths {d})" for (w, d), v in _CONVNEXT_VARIANTS.items())
        raise UserError(f"{source}: ConvNeXt of width {width} and depths {depths} has no teacher here; known: {known}")
    return variant


def _bnext_size(backbone: StateDict, source) -> str:
    width = backbone["feature.0.conv1.weight"].shape[0]
    blocks = len({k.split(".")[1] for k in backbone if k.startswith("feature.")})
    for size, channels in BNEXT_CHANNELS.items():
        if (channels[0], len(channels)) == (width, blocks):
            return size
    raise UserError(f"{source}: BNext with stem width {width} and {blocks} blocks matches none of "
                    f"{', '.join(BNEXT_CHANNELS)}")


def bnext_notes(backbone: StateDict) -> List[str]:
    """Stored values for which this project's BNext computes differently from the released one."""
    notes = []
    zeros = sum(int((backbone[k[:-len("temperature")] + "weight"] == 0).sum()) for k, t in backbone.items()
                if k.endswith("binary_conv.temperature") and float(t.max()) < MIN_TEMPERATURE)
    if zeros:
        notes.append(f"{zeros} binary weights are exactly 0: the original's sign() used 0 for them, this project +1")
    return notes


def street_note(state: StateDict) -> List[str]:
    """A three-view checkpoint trained with --share keeps a separate street network, left out here."""
    view = _prefixed(state, VIEW_PREFIX)
    if any(k not in view or not torch.equal(v, view[k]) for k, v in _prefixed(state, STREET_PREFIX).items()):
        return ["model_2 (street and Google views) has its own weights and is not converted; model_1 (satellite "
                "and drone views) is"]
    return []


def _backbone(fmt: str, view: StateDict, source) -> Tuple[str, dict, StateDict, List[str]]:
    """``(model name, model options, backbone entries in the original naming, notes)``."""
    backbone = _prefixed(view, BACKBONE_PREFIX)
    if fmt == MCCG:
        return f"mccg_convnext_{_convnext_variant(backbone, source)}", {"head_input": "spatial"}, backbone, []
    backbone = {k: v.clamp(0, 1) if _FFN_SCALE.search(k) else v for k, v in backbone.items()}
    # The released BNext average-pools its last map before the head: head_input "pooled".
    options = {"head_input": "pooled", "binarizer": "bnext", "temperature": 0.0}
    return f"bicrossnet_bnext_{_bnext_size(backbone, source)}", options, backbone, bnext_notes(backbone)


def _map_backbone(fmt: str, model: torch.nn.Module, backbone: StateDict) -> StateDict:
    """Backbone entries under this project's names: timm's renaming of facebookresearch ConvNeXt
    keys, or BNext's own names (both without the ImageNet classifier)."""
    if fmt == MCCG:
        return {"backbone.model." + k: v for k, v in _convnext_filter(backbone, model.backbone.model).items()}
    return {"backbone." + k: v for k, v in bnext_filter(backbone, model.backbone).items()}


def _convert(state: StateDict, fmt: str, source) -> Converted:
    view = view_state(state)
    block = sum(1 for i in (1, 2) if f"classifier_mcb{i}.add_block.0.weight" in view)
    num_classes = int(view["classifier1.classifier.0.weight"].shape[0])
    model_name, options, backbone, notes = _backbone(fmt, view, source)
    options = {"block": block, **options}
    model = build_model(model_name, num_classes, **options)
    mapped = {**_map_backbone(fmt, model, backbone), **map_head(view, block)}
    load_model_state(model, mapped, source, model_name, what="converted checkpoint")
    views = 3 if any(k.startswith(STREET_PREFIX) for k in state) else 2
    return Converted(model.eval(), fmt, model_name, options, num_classes, tuple(street_note(state) + notes), views)


def convert_state(state: StateDict, fmt: str = "auto", source="checkpoint") -> Converted:
    """Build the matching network of this project and load ``state`` into it strictly."""
    detected = detect_format(state, source)
    if fmt not in ("auto", detected):
        raise UserError(f"{source} is not in the {fmt} layout: it is {detected}, {FORMATS[detected]}")
    try:
        return _convert(state, detected, source)
    except (KeyError, IndexError, ValueError, RuntimeError) as err:  # entries missing or of the wrong shape
        raise UserError(f"{source} has the {detected} layout but is incomplete or damaged "
                        f"({type(err).__name__}: {first_line(err)})") from None
