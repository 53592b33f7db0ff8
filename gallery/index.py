"""A gallery index: a faiss index of descriptors, the gallery item names, and what made them.

Index kinds (faiss does the searching; nothing here re-implements it):

* ``exact``: every item is compared with the query. Float descriptors: ``IndexFlatIP`` (the
  protocol's dot-product score, higher is better); binary codes: ``IndexBinaryFlat`` (Hamming
  distance, lower is better; popcount over 64-bit words).
* ``ivf`` (binary only): ``IndexBinaryIVF``, the codes clustered into ``nlist`` lists (k-means in
  Hamming space on the gallery itself); a query scans its ``nprobe`` nearest lists only.
* ``hnsw`` (binary only): ``IndexBinaryHNSW``, a navigable small-world graph of ``M`` links per
  item; a query walks it with a beam of ``ef_search`` candidates.

The approximate kinds trade recall for speed (``python -m benchmarks.gallery_scale`` measures both).

File format: one NumPy ``.npz`` archive, written atomically, read with ``allow_pickle=False`` so
loading never runs code from the file: ``index`` (the bytes of ``faiss.serialize_index`` or
``serialize_index_binary``), ``names`` (unicode array, one per item, in index order) and
``meta`` (UTF-8 JSON: :data:`FORMAT`, version, descriptor kind, index kind, dimensions, the run,
checkpoint, its SHA-256, model and input size that made the descriptors).
"""
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import faiss
import numpy as np
import torch

from evaluation.binary_codes import check_descriptor, pack_signs
from utils.errors import UserError
from utils.files import atomic_write

FORMAT, VERSION = "bicrossnet-gallery-index", 1
INDEX_KINDS = ("exact", "ivf", "hnsw")
APPROXIMATE_KINDS = ("ivf", "hnsw")
# What a run must share with the index before its descriptors may be compared with it.
RUN_FIELDS = ("checkpoint_sha256", "model", "h", "w")


@dataclass
class GalleryIndex:
    """A faiss index with one name per item and the metadata of :mod:`gallery.index`."""
    index: object
    names: List[str]
    meta: dict

    @property
    def descriptor(self) -> str:
        return self.meta["descriptor"]


def check_kinds(descriptor: str, kind: str) -> None:
    """ValueError unless ``kind`` indexes ``descriptor`` descriptors (approximate kinds: binary only)."""
    check_descriptor(descriptor)
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind {kind!r}: expected one of {', '.join(INDEX_KINDS)}")
    if descriptor == "float" and kind != "exact":
        raise ValueError(f"index kind {kind!r} is for binary descriptors; float descriptors use 'exact'")


def encode(features, descriptor: str) -> np.ndarray:
    """What the index stores for (N, D) float descriptors: float32 rows, or packed sign codes."""
    features = torch.as_tensor(features).detach().cpu().float()
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(f"features of shape {tuple(features.shape)}: expected (N, D) with N >= 1")
    if check_descriptor(descriptor) == "binary":
        return pack_signs(features)
    return np.ascontiguousarray(features.numpy(), dtype=np.float32)


def default_nlist(count: int) -> int:
    """IVF lists for ``count`` items: about 4 sqrt(count), at least 1, and at most count / 39 (faiss
    wants about 39 training points a list) where count allows."""
    return int(max(1, min(4 * round(count ** 0.5), count // 39)))


def new_index(encoded: np.ndarray, descriptor: str, kind: str, nlist: int = 0, hnsw_m: int = 32):
    """An empty faiss index for ``encoded`` rows (IVF: trained on them; ``nlist`` 0 = default)."""
    check_kinds(descriptor, kind)
    dims = encoded.shape[1] * (8 if descriptor == "binary" else 1)
    if descriptor == "float":
        return faiss.IndexFlatIP(dims)
    if kind == "exact":
        return faiss.IndexBinaryFlat(dims)
    if kind == "hnsw":
        if hnsw_m < 2:
            raise ValueError(f"hnsw_m={hnsw_m}: expected at least 2 links per item")
        return faiss.IndexBinaryHNSW(dims, hnsw_m)
    nlist = nlist or default_nlist(len(encoded))
    if not 1 <= nlist <= len(encoded):
        raise ValueError(f"nlist={nlist}: expected 1 to {len(encoded)} lists (one training code each at least)")
    index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(dims), dims, nlist)
    index.train(encoded)
    index.nprobe = max(1, nlist // 8)
    return index


def build(features, names: List[str], descriptor: str, kind: str, meta: dict, nlist: int = 0,
          hnsw_m: int = 32) -> GalleryIndex:
    """A gallery index of ``features`` (float (N, D)) named ``names``; ``meta`` describes the run."""
    if len(names) != len(features):
        raise ValueError(f"{len(names)} names for {len(features)} descriptors")
    encoded = encode(features, descriptor)
    index = new_index(encoded, descriptor, kind, nlist, hnsw_m)
    index.add(encoded)
    meta = dict(meta, format=FORMAT, version=VERSION, descriptor=descriptor, index=kind,
                dims=int(torch.as_tensor(features).shape[1]))
    return GalleryIndex(index, list(names), meta)


def add(gallery: GalleryIndex, features, names: List[str]) -> None:
    """Append items to ``gallery`` (same descriptor dimensions; IVF keeps its trained lists)."""
    if len(names) != len(features):
        raise ValueError(f"{len(names)} names for {len(features)} descriptors")
    if torch.as_tensor(features).shape[1] != gallery.meta["dims"]:
        raise ValueError(f"descriptors of {torch.as_tensor(features).shape[1]} dimensions cannot join an index of "
                         f"{gallery.meta['dims']}")
    gallery.index.add(encode(features, gallery.descriptor))
    gallery.names += list(names)


def set_search_effort(gallery: GalleryIndex, nprobe: int = 0, ef_search: int = 0) -> None:
    """IVF lists scanned per query (``nprobe``) or HNSW beam width (``ef_search``); 0 keeps the saved one."""
    if nprobe and gallery.meta["index"] == "ivf":
        gallery.index.nprobe = nprobe
    if ef_search and gallery.meta["index"] == "hnsw":
        gallery.index.hnsw.efSearch = ef_search


def search(gallery: GalleryIndex, features, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(ids, scores)`` (Q, min(k, N)) of the nearest items, best first: dot products (float) or
    Hamming distances (binary). An approximate index may find fewer: id -1 then."""
    if k < 1:
        raise ValueError(f"k={k}: expected at least 1")
    features = torch.as_tensor(features)
    if features.ndim != 2 or features.shape[1] != gallery.meta["dims"]:
        raise ValueError(f"query descriptors of shape {tuple(features.shape)}: the index holds "
                         f"{gallery.meta['dims']}-dimensional ones")
    scores, ids = gallery.index.search(encode(features, gallery.descriptor), min(k, len(gallery.names)))
    return ids, scores


def save(gallery: GalleryIndex, path) -> Path:
    """Write ``gallery`` to ``path`` atomically (the old file stays whole if the write fails)."""
    path = Path(path)
    binary = gallery.descriptor == "binary"
    data = (faiss.serialize_index_binary if binary else faiss.serialize_index)(gallery.index)
    arrays = dict(index=np.asarray(data, dtype=np.uint8), names=np.array(gallery.names, dtype=str),
                  meta=np.frombuffer(json.dumps(gallery.meta, sort_keys=True).encode(), dtype=np.uint8))
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError as err:
        raise UserError(f"cannot write {path} ({err.strerror or err}); the previous file is intact") from None
    return path


def _read_arrays(path: Path) -> dict:
    not_index = f"{path} is not a gallery index (expected a file written by `search.py build`)"
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not {"index", "names", "meta"} <= set(archive.files):
                raise UserError(not_index)
            return {name: archive[name] for name in ("index", "names", "meta")}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):  # not an archive, or pickled content
        raise UserError(not_index) from None


def load(path) -> GalleryIndex:
    """The gallery index saved at ``path``; anything else is a one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"gallery index {path} does not exist")
    arrays = _read_arrays(path)
    try:
        meta = json.loads(arrays["meta"].tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a gallery index (its metadata lacks the {FORMAT!r} format tag)")
    if meta.get("version") != VERSION:
        raise UserError(f"{path} is a gallery index of format version {meta.get('version')}; this version reads "
                        f"{VERSION}")
    binary = meta.get("descriptor") == "binary"
    try:
        index = (faiss.deserialize_index_binary if binary else faiss.deserialize_index)(arrays["index"])
    except RuntimeError:
        raise UserError(f"{path} holds a damaged faiss index; rebuild it with `search.py build`") from None
    names = [str(name) for name in arrays["names"]]
    if index.ntotal != len(names) or isinstance(index, faiss.IndexBinary) != binary:
        raise UserError(f"{path} is inconsistent ({index.ntotal} indexed items, {len(names)} names); rebuild it")
    return GalleryIndex(index, names, meta)


def run_mismatch(meta: dict, identity: dict) -> List[str]:
    """The fields of :data:`RUN_FIELDS` in which a run's ``identity`` differs from an index's ``meta``."""
    def shown(value):  # a SHA-256 is told apart by its first 12 digits
        return repr(value[:12] + "…" if isinstance(value, str) and len(value) == 64 else value)
    return [f"{field} {shown(identity.get(field))} (index: {shown(meta.get(field))})" for field in RUN_FIELDS
            if identity.get(field) != meta.get(field)]
