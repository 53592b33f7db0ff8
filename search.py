"""Build a gallery index from a trained run and search it with query images (docs/binary_search.md).

    python search.py build --run checkpoints/RUN --images tiles/ --out tiles.gallery.npz --descriptor binary
    python search.py build --run checkpoints/RUN --features checkpoints/RUN/pytorch_result.mat --out g.npz
    python search.py build --run checkpoints/RUN --images more_tiles/ --out tiles.gallery.npz --append
    python search.py query --index tiles.gallery.npz --images drone_photos/ --top_k 5 --out matches.json

``build`` computes each gallery image's descriptor with the run (as test.py does: its input size,
flip TTA unless --no_flip), or takes them from a test.py ``--export_mat`` file (its gallery_f and
gallery_path; the descriptors are taken to come from --run), and saves a faiss index with the
image names and the run's identity (run, checkpoint and its SHA-256, model, input size, descriptor
kind). ``--descriptor binary`` stores 1 bit per dimension (192 bytes for 1,536 dimensions) and
searches by Hamming distance; ``--index ivf`` or ``hnsw`` makes binary search sublinear and
approximate. ``--append`` adds images to an existing index of the same run and descriptor kind.

``query`` describes the query images with the index's run (recorded in the index; --run names
another copy of it, which must hold the same checkpoint) or reads them from a ``.mat`` file's
query_f/query_path, and prints each query's top-K gallery names with their score (dot product
for float, higher is closer; Hamming distance for binary, lower is closer); --out also saves them
as JSON.
"""
import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import faiss

from evaluation.binary_codes import DESCRIPTORS
from gallery import index as gallery_index
from gallery.images import RunDescriber, list_images, read_mat_features
from utils.device import DEVICE_CHOICES, resolve_device
from utils.errors import UserError, exit_on_user_error
from utils.files import atomic_write_text


def common_flags(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="PATH", help="a folder of images (searched recursively) or one image")
    source.add_argument("--features", metavar="FILE.mat", help="descriptors from test.py --export_mat instead")
    p.add_argument("--which_epoch", default="last", help="checkpoint of the run: 'last' or an epoch number")
    p.add_argument("--batchsize", type=int, default=32, help="images per forward pass")
    p.add_argument("--num_workers", type=int, default=0, help="data-loading processes")
    p.add_argument("--device", default="cpu", choices=DEVICE_CHOICES, help="where the network runs")
    p.add_argument("--threads", type=int, default=0, help="faiss search threads (0: faiss's default, all cores)")


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="index gallery images", formatter_class=formatter)
    b.add_argument("--run", required=True, help="trained run folder (holding opts.yaml and its checkpoints)")
    b.add_argument("--out", required=True, help="index file to write (NumPy .npz archive; replaced atomically)")
    b.add_argument("--descriptor", default="float", choices=DESCRIPTORS,
                   help="float: 1,536 float32 per image, dot product; binary: signs packed to bits, Hamming distance")
    b.add_argument("--index", default="exact", choices=gallery_index.INDEX_KINDS,
                   help="exact search, or (binary only) IVF lists or an HNSW graph: sublinear, approximate")
    b.add_argument("--nlist", type=int, default=0, help="--index ivf: lists (0: about 4 sqrt(items))")
    b.add_argument("--hnsw_m", type=int, default=32, help="--index hnsw: links per item")
    b.add_argument("--append", action="store_true", help="add to the existing --out index instead of replacing it")
    b.add_argument("--no_flip", action="store_true", help="describe images without the flip test-time augmentation")
    common_flags(b)
    q = commands.add_parser("query", help="search an index with query images", formatter_class=formatter)
    q.add_argument("--index", required=True, help="index file written by `search.py build`")
    q.add_argument("--run", default=None,
                   help="run folder that describes the queries; left out, the run recorded in the index")
    q.add_argument("--top_k", type=int, default=10, help="gallery items listed per query")
    q.add_argument("--nprobe", type=int, default=0, help="IVF index: lists scanned per query (0: as saved)")
    q.add_argument("--ef_search", type=int, default=0, help="HNSW index: search beam width (0: as saved)")
    q.add_argument("--out", default=None, help="also save the results here as JSON")
    common_flags(q)
    return p


def check_flags(args) -> None:
    counts = {"--batchsize": args.batchsize, "--top_k": getattr(args, "top_k", 1)}
    for flag, value in counts.items():
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    for flag in ("num_workers", "threads", "nlist", "nprobe", "ef_search"):
        if getattr(args, flag, 0) < 0:
            raise UserError(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    if args.threads:
        faiss.omp_set_num_threads(args.threads)


def read_source(args):
    """``(image paths or None, names, descriptors or None)`` of --images or --features, read before
    any network loads."""
    if args.features:
        features, names = read_mat_features(args.features, "gallery" if args.command == "build" else "query")
        return None, names, features
    paths, names = list_images(args.images)
    return paths, names, None


def descriptors(args, describer: RunDescriber, paths, features):
    """The --features descriptors, or those of the images at ``paths`` computed by ``describer``."""
    return features if paths is None else describer.describe(paths, args.batchsize, args.num_workers)


def build(args) -> int:
    if args.descriptor == "float" and args.index != "exact":
        raise UserError(f"--index {args.index} is for binary descriptors; use --descriptor binary or --index exact")
    out = Path(args.out)
    previous = gallery_index.load(out) if args.append else None
    if previous is not None and previous.descriptor != args.descriptor:
        raise UserError(f"{out} holds {previous.descriptor} descriptors; adding {args.descriptor} ones would mix "
                        f"descriptor kinds (pass --descriptor {previous.descriptor} or build a new index)")
    paths, names, features = read_source(args)
    describer = RunDescriber(args.run, args.which_epoch, flip=not args.no_flip, device=resolve_device(args.device))
    identity = describer.identity
    if previous is not None:
        mismatch = gallery_index.run_mismatch(previous.meta, identity)
        if mismatch:
            raise UserError(f"--run {args.run} is not the run of {out}: " + "; ".join(mismatch))
        gallery_index.add(previous, descriptors(args, describer, paths, features), names)
        gallery = previous
    else:
        meta = dict(identity, source=str(Path(args.features or args.images).resolve()),
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        features = descriptors(args, describer, paths, features)
        try:
            gallery = gallery_index.build(features, names, args.descriptor, args.index, meta, args.nlist, args.hnsw_m)
        except ValueError as err:
            raise UserError(f"--nlist/--hnsw_m: {err}") from None
    gallery_index.save(gallery, out)
    print(f"{out}: {len(gallery.names)} items, {gallery.descriptor} descriptors ({gallery.meta['dims']} dims), "
          f"{gallery.meta['index']} index, run {identity['run']} ({identity['model']}, "
          f"{identity['h']}x{identity['w']})")
    return 0


def query(args) -> int:
    gallery = gallery_index.load(args.index)
    run = args.run or gallery.meta["run_dir"]
    if args.run is None and not Path(run).is_dir():
        raise UserError(f"the run of {args.index} ({run}) is not there; pass --run with a copy of it")
    paths, names, features = read_source(args)
    describer = RunDescriber(run, args.which_epoch, flip=gallery.meta["flip"], device=resolve_device(args.device))
    mismatch = gallery_index.run_mismatch(gallery.meta, describer.identity)
    if mismatch:
        raise UserError(f"run {run} did not make {args.index}, its descriptors cannot be compared: "
                        + "; ".join(mismatch))
    features = descriptors(args, describer, paths, features)
    if features.shape[1] != gallery.meta["dims"]:
        raise UserError(f"{args.features}: descriptors of {features.shape[1]} dimensions; {args.index} holds "
                        f"{gallery.meta['dims']}-dimensional ones")
    gallery_index.set_search_effort(gallery, args.nprobe, args.ef_search)
    ids, scores = gallery_index.search(gallery, features, args.top_k)
    report(args, gallery, names, ids, scores)
    return 0


def report(args, gallery, names, ids, scores) -> None:
    """Print each query's matches; with --out also save them as JSON."""
    score_name = "hamming" if gallery.descriptor == "binary" else "score"
    results = []
    for name, row_ids, row_scores in zip(names, ids.tolist(), scores.tolist()):
        matches = [{"name": gallery.names[i], score_name: s} for i, s in zip(row_ids, row_scores) if i >= 0]
        results.append({"query": name, "matches": matches})
        print(f"{name}: " + ", ".join(f"{m['name']} ({m[score_name]:.4g})" for m in matches))
    if args.out:
        atomic_write_text(args.out, json.dumps({"index": str(Path(args.index).resolve()), "descriptor":
                                                gallery.descriptor, "score": score_name, "results": results},
                                               indent=2) + "\n")
        print(f"saved {args.out}")


@exit_on_user_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_flags(args)
    return build(args) if args.command == "build" else query(args)


if __name__ == "__main__":
    raise SystemExit(main())
