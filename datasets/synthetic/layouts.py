"""Writers of the two benchmark folder layouts, and the manifest that marks a generated dataset.

Images are encoded without metadata at a fixed quality, so the same seed writes the same bytes.
"""
import io
import json
import shutil
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

from PIL import Image

from utils.errors import UserError

from ..folders import SUES_ALTITUDES
from .render import DRONE_LOOK, SATELLITE_LOOK, drone_view, render, satellite_view
from .scene import Scene, Stream, make_scene, place_rng
from .street import render_google, render_street

MANIFEST = "synthetic.json"
JPEG_QUALITY = 90
SUES_HALF_SIZE_PER_METRE = 0.28 / 150  # drone ground half-width per metre of altitude
SUES_TRAIN_SHARE = 0.6  # share of the places a SUES-200 look-alike trains on, unless told


def _encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    """Encode without metadata so equal pixels give equal bytes."""
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


class _Writer:
    """Writes class folders under a dataset root and counts classes and images per view folder."""

    def __init__(self, root: Path):
        self.root = root
        self.counts = {}

    def write(self, view: str, class_id: str, files: Sequence[Tuple[str, bytes]]):
        """Write ``(name, data)`` files into ``view/class_id/`` (created even when ``files`` is empty)."""
        folder = self.root / view / class_id
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files:
            (folder / name).write_bytes(data)
        count = self.counts.setdefault(view, {"classes": set(), "images": 0})
        count["classes"].add(class_id)
        count["images"] += len(files)

    def summary(self) -> dict:
        return {view: {"classes": len(c["classes"]), "images": c["images"]}
                for view, c in sorted(self.counts.items())}


def _prepare_output(out) -> Path:
    """Refuse to mix with foreign data; replace a dataset this generator wrote before."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; expected a folder for the synthetic dataset")
    links = [out / split for split in ("train", "test") if (out / split).is_symlink()]
    if links:
        raise UserError(f"{links[0]} is a symbolic link; refusing to replace what it points to (remove the link, or "
                        f"choose another --out)")
    previous = [out / split for split in ("train", "test") if (out / split).exists()]
    if previous and not (out / MANIFEST).is_file():
        raise UserError(f"{out} already holds {previous[0].name}/ that this generator did not write (no "
                        f"{MANIFEST}); expected an empty or new folder")
    for path in previous:
        shutil.rmtree(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _finish(writer: _Writer, layout: str, parameters: dict, **extra) -> dict:
    summary = {"layout": layout, "root": str(writer.root), "parameters": parameters,
               "folders": writer.summary(), **extra}
    manifest = {k: v for k, v in summary.items() if k != "root"}
    (writer.root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return summary


def _check_counts(**counts):
    """Each keyword is ``parameter=(value, minimum)``; the error names the parameter."""
    for name, (value, minimum) in counts.items():
        if int(value) != value or value < minimum:
            raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")


def _satellite(scene: Scene, seed: int, place: int, size: int) -> Image.Image:
    rng = place_rng(seed, place, Stream.SATELLITE)
    return render(scene, satellite_view(scene.sun), size, rng, SATELLITE_LOOK)


def _oblique_files(scene: Scene, size: int, names: Sequence[str], rngs, half_size: Callable,
                   tilt: Tuple[float, float]) -> list:
    """Encoded drone renders, one per name; ``half_size(rng)`` draws each view's altitude."""
    files = []
    for name, rng in zip(names, rngs):
        view = drone_view(rng, scene.sun, half_size(rng), tilt)
        files.append((name, _encode(render(scene, view, size, rng, DRONE_LOOK, occlude=True))))
    return files


def _street_files(scene: Scene, seed: int, place: int, size: int, stream: Stream, count: int) -> list:
    return [(f"street-{k + 1:02d}.jpg", _encode(render_street(scene, size, place_rng(seed, place, stream, k))))
            for k in range(count)]


def _google_plan(seed: int, train_ids: range, google: int) -> Tuple[Dict[int, int], Dict[int, Tuple[int, int]]]:
    """Google images per training place, and ``{place: (frame, neighbour)}`` for the places one
    of whose google frames shows another training place.

    About one place in eight (at least one) has none, as some classes have no google images in
    the real data; about one in four of the others (at least one) holds a neighbour's frame, as
    image-search results are noisy. Ids carry no geography, so the neighbour is drawn at random.
    """
    shuffled = place_rng(seed, 0, Stream.CHOICE).permutation(train_ids).tolist()
    cut = max(1, len(shuffled) // 8)
    counts = {place: 0 if i < cut else google for i, place in enumerate(shuffled)}
    neighbours = {}
    for place in shuffled[cut:cut + max(1, len(shuffled) // 4)] if google else ():
        rng = place_rng(seed, place, Stream.NEIGHBOUR)
        neighbours[place] = (int(rng.integers(google)), int(rng.choice([p for p in train_ids if p != place])))
    return counts, neighbours


def _google_files(scene: Scene, seed: int, place: int, size: int, count: int, neighbour=None) -> list:
    """Google frames of a place; ``neighbour`` ``(frame, place)`` swaps one for another place's scene."""
    files = []
    for k in range(count):
        shown = make_scene(seed, neighbour[1], size) if neighbour and k == neighbour[0] else scene
        files.append((f"google-{k + 1:02d}.jpg",
                      _encode(render_google(shown, size, place_rng(seed, place, Stream.GOOGLE, k)))))
    return files


def generate_university(out, *, train_places: int = 40, test_places: int = 30,
                        distractor_places: int = 10, drones_per_place: int = 8,
                        image_size: int = 128, seed: int = 0, street_per_place: int = 2,
                        google_per_place: int = 2, query_street_per_place: int = 3,
                        gallery_street_per_place: int = 3) -> dict:
    """Write a University-1652-like dataset under ``out``; returns a summary of the folders.

    Test places get ids 0000.., train places continue after them, then the distractors, which
    appear only in the galleries. Street and google images are ground-level photos (see
    ``street``); the query and gallery street images of a place are different frames. The
    summary's ``google_neighbours`` maps each google file showing another place to that place.
    """
    counts = dict(train_places=train_places, test_places=test_places, distractor_places=distractor_places,
                  drones_per_place=drones_per_place, image_size=image_size, street_per_place=street_per_place,
                  google_per_place=google_per_place, query_street_per_place=query_street_per_place,
                  gallery_street_per_place=gallery_street_per_place)
    minimum = dict(train_places=1, test_places=1, drones_per_place=1, image_size=32)
    _check_counts(**{name: (value, minimum.get(name, 0)) for name, value in counts.items()})
    writer = _Writer(_prepare_output(out))
    test_ids = range(test_places)
    train_ids = range(test_places, test_places + train_places)
    distractor_ids = range(train_ids.stop, train_ids.stop + distractor_places)
    google, neighbours = _google_plan(seed, train_ids, google_per_place)
    drone_names = [f"image-{k + 1:02d}.jpeg" for k in range(drones_per_place)]

    for place in [*test_ids, *train_ids, *distractor_ids]:
        cid = f"{place:04d}"
        scene = make_scene(seed, place, image_size)
        views = {"satellite": [(f"{cid}.jpg", _encode(_satellite(scene, seed, place, image_size)))],
                 "drone": _oblique_files(scene, image_size, drone_names,
                                         (place_rng(seed, place, Stream.DRONE, k) for k in range(drones_per_place)),
                                         lambda rng: rng.uniform(0.3, 0.5), (0.1, 0.45))}
        if place in train_ids:
            views["street"] = _street_files(scene, seed, place, image_size, Stream.STREET, street_per_place)
            views["google"] = _google_files(scene, seed, place, image_size, google[place], neighbours.get(place))
            writes = [("train/", views)]
        else:  # the query and gallery street images of a place are different frames
            writes = [("test/gallery_", dict(views, street=_street_files(
                scene, seed, place, image_size, Stream.GALLERY_STREET, gallery_street_per_place)))]
            if place in test_ids:
                writes.append(("test/query_", dict(views, street=_street_files(
                    scene, seed, place, image_size, Stream.QUERY_STREET, query_street_per_place))))
        for prefix, files_of in writes:
            for view, files in files_of.items():
                writer.write(prefix + view, cid, files)

    return _finish(writer, "university", dict(counts, seed=seed), google_neighbours={
        f"{place:04d}/google-{frame + 1:02d}.jpg": f"{shown:04d}"
        for place, (frame, shown) in sorted(neighbours.items())})


def _check_sues(places: int, train_places: int, drones_per_place: int, image_size: int,
                altitudes: Sequence[int]):
    _check_counts(train_places=(train_places, 1), drones_per_place=(drones_per_place, 1),
                  image_size=(image_size, 32))
    if train_places >= places:
        raise ValueError(f"train_places={train_places}: expected fewer than places={places} "
                         "so that some places are left for testing")
    if not altitudes or min(altitudes) <= 0 or len(set(altitudes)) != len(altitudes):
        raise ValueError(f"altitudes={altitudes}: expected distinct positive altitudes in metres")


def generate_sues(out, *, places: int = 50, train_places: Optional[int] = None, drones_per_place: int = 8,
                  image_size: int = 128, altitudes: Sequence[int] = SUES_ALTITUDES, seed: int = 0) -> dict:
    """Write a SUES-200-like dataset under ``out``; returns a summary of the folders.

    Ids run 0001..; the first ``train_places`` (default: 60% of ``places``, rounded) are training
    places, the rest test places. Queries hold the test places, galleries every place. One
    satellite image per place (the same at every altitude); drone views widen in proportion to
    the altitude.
    """
    _check_counts(places=(places, 2))
    if train_places is None:
        train_places = round(SUES_TRAIN_SHARE * places)
    altitudes = [int(a) for a in altitudes]
    _check_sues(places, train_places, drones_per_place, image_size, altitudes)
    writer = _Writer(_prepare_output(out))
    drone_names = [f"{k}.jpg" for k in range(drones_per_place)]

    for place in range(1, places + 1):
        cid = f"{place:04d}"
        is_train = place <= train_places
        scene = make_scene(seed, place, image_size)
        satellite = [("0.png", _encode(_satellite(scene, seed, place, image_size), "PNG"))]
        for altitude in altitudes:
            drones = _oblique_files(
                scene, image_size, drone_names,
                (place_rng(seed, place, Stream.DRONE, altitude, k) for k in range(drones_per_place)),
                lambda rng: SUES_HALF_SIZE_PER_METRE * altitude * rng.uniform(0.92, 1.08), (0.05, 0.35))
            if is_train:
                writer.write(f"train/{altitude}/satellite", cid, satellite)
                writer.write(f"train/{altitude}/drone", cid, drones)
            else:
                writer.write(f"test/{altitude}/query_satellite", cid, satellite)
                writer.write(f"test/{altitude}/query_drone", cid, drones)
            writer.write(f"test/{altitude}/gallery_satellite", cid, satellite)
            writer.write(f"test/{altitude}/gallery_drone", cid, drones)

    return _finish(writer, "sues", dict(places=places, train_places=train_places,
                                        drones_per_place=drones_per_place, image_size=image_size,
                                        altitudes=altitudes, seed=seed))
