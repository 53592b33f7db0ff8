"""Deterministic synthetic look-alikes of University-1652 and SUES-200.

The real benchmarks cannot be downloaded here, yet training, retrieval and export must run end to
end on data with their exact folder layouts. Each class is a procedurally generated *place*: a
vector scene of ground texture, fields, roads, buildings (distinct footprints, heights and roof
colours) and trees. The satellite image is a north-up orthographic render of the scene; drone
images render the same scene through a perspective homography with a random heading, altitude and
tilt, with extruded walls, another sun position, a colour/lighting shift, haze and occluders. The
layout and roof colours survive across views while the pixels do not, so matching a drone image to
its satellite image has to be learned, and places stay distinguishable.

Same seed => byte-identical files: every random draw comes from a generator keyed by
``(seed, place, stream, ...)`` and images are written without metadata at a fixed JPEG quality.

CLI: ``python -m datasets.synthetic --layout university --out data/synthetic-university``.
"""
import argparse
import colorsys
import io
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from utils.errors import UserError, exit_on_user_error

WORLD = 1.2  # the scene spans [-WORLD, WORLD]^2 in world units (y points north)
SATELLITE_HALF = 0.55  # the satellite image covers [-SATELLITE_HALF, SATELLITE_HALF]^2
SUPERSAMPLE = 2  # views are drawn at this multiple of the output size, then box-filtered
JPEG_QUALITY = 90
MANIFEST = "synthetic.json"
SUES_ALTITUDES = (150, 200, 250, 300)
SUES_HALF_SIZE_PER_METRE = 0.28 / 150  # drone ground half-width per metre of altitude

# Independent random streams of one place, so a view does not depend on how many others exist.
_SCENE, _SATELLITE, _DRONE, _STREET, _GOOGLE, _CHOICE = range(6)

LAND_COVERS = ((92, 118, 64), (146, 138, 96), (128, 110, 86), (138, 138, 132), (104, 124, 92))
FIELD_COLOURS = ((70, 110, 50), (170, 160, 100), (110, 90, 70), (150, 150, 150), (70, 95, 120))
HAZE = np.array([200.0, 205.0, 215.0])


def _rng(seed: int, place: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, place, stream, *keys])


# ---------------------------------------------------------------------------------------------
# Scene description


@dataclass(frozen=True)
class Building:
    footprint: np.ndarray  # (4, 2) corners, counter-clockwise
    height: float
    roof: np.ndarray  # RGB
    wall: np.ndarray  # RGB
    detail: Optional[np.ndarray]  # (4, 2) roof structure (stair house, plant room) or None
    detail_colour: np.ndarray


@dataclass(frozen=True)
class Tree:
    centre: np.ndarray
    radius: float
    height: float
    colour: np.ndarray


@dataclass(frozen=True)
class Scene:
    ground: Image.Image  # raster of [-WORLD, WORLD]^2: texture, fields, roads
    base: np.ndarray  # dominant ground colour, also the street-view ground
    buildings: Tuple[Building, ...]
    trees: Tuple[Tree, ...]
    sun: np.ndarray  # shadow offset per unit of height, in world units

    @property
    def ground_from_world(self) -> np.ndarray:
        """3x3 map from world coordinates to ground-raster pixels (image y points south)."""
        k = self.ground.width / (2 * WORLD)
        return np.array([[k, 0, k * WORLD], [0, -k, k * WORLD], [0, 0, 1.0]])


def _rectangle(centre, length, width, angle) -> np.ndarray:
    u = np.array([math.cos(angle), math.sin(angle)]) * length / 2
    v = np.array([-math.sin(angle), math.cos(angle)]) * width / 2
    return np.array([centre - u - v, centre + u - v, centre + u + v, centre - u + v])


def _circle(centre, radius, n=10) -> np.ndarray:
    a = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return centre + radius * np.stack([np.cos(a), np.sin(a)], 1)


def _colour(rgb) -> tuple:
    return tuple(min(255, max(0, int(c))) for c in rgb)


def _hsv(rng, sat, val) -> np.ndarray:
    return 255 * np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*sat), rng.uniform(*val)))


def _smooth_noise(rng, cells: int, size: int) -> np.ndarray:
    noise = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(noise, "F").resize((size, size), Image.BICUBIC))


def _road_distance(point, roads) -> float:
    """Distance from ``point`` to the nearest road edge (negative on a road)."""
    gaps = []
    for anchor, direction, width in roads:
        dx, dy = point - anchor
        gaps.append(abs(direction[0] * dy - direction[1] * dx) - width / 2)
    return min(gaps, default=math.inf)


def make_scene(seed: int, place: int, image_size: int) -> Scene:
    """Random vector scene of one place; the ground raster has 4 px per output pixel of width."""
    rng = _rng(seed, place, _SCENE)
    res = max(256, 4 * image_size)
    to_px = res / (2 * WORLD)
    base = np.array(LAND_COVERS[rng.integers(len(LAND_COVERS))]) + rng.normal(0, 10, 3)
    ground = Image.new("RGB", (res, res), _colour(base))
    draw = ImageDraw.Draw(ground)

    def px(points):
        return [((x + WORLD) * to_px, (WORLD - y) * to_px) for x, y in points]

    for _ in range(rng.integers(2, 5)):
        field = _rectangle(rng.uniform(-1, 1, 2), rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.5),
                           rng.uniform(0, math.pi))
        colour = np.array(FIELD_COLOURS[rng.integers(len(FIELD_COLOURS))]) + rng.normal(0, 12, 3)
        draw.polygon(px(field), fill=_colour(colour))

    roads = []
    for _ in range(rng.integers(1, 4)):
        angle = rng.uniform(0, math.pi)
        anchor, direction = rng.uniform(-0.5, 0.5, 2), np.array([math.cos(angle), math.sin(angle)])
        width = rng.uniform(0.035, 0.07)
        ends = px([anchor - 3 * direction, anchor + 3 * direction])
        draw.line(ends, fill=(int(rng.uniform(55, 95)),) * 3, width=int(width * to_px))
        if rng.uniform() < 0.5:
            draw.line(ends, fill=(205, 200, 170), width=max(1, int(width * to_px / 10)))
        roads.append((anchor, direction, width))

    texture = 14 * _smooth_noise(rng, 6, res) + 7 * _smooth_noise(rng, 24, res)
    tint = np.stack([_smooth_noise(rng, 4, res) for _ in range(3)], -1)
    pixels = np.asarray(ground, np.float32) + texture[..., None] + 5 * tint
    ground = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    buildings, spots = [], []  # spots: (centre, radius) already taken
    target = int(rng.integers(8, 15))
    for _ in range(300):
        if len(buildings) == target:
            break
        if not buildings:  # first a larger landmark near the centre, as in University-1652
            centre, length = rng.normal(0, 0.08, 2), rng.uniform(0.18, 0.32)
        else:
            spread = 0.6 if rng.uniform() < 0.6 else 1.05
            centre, length = rng.uniform(-spread, spread, 2), rng.uniform(0.07, 0.26)
        width = rng.uniform(0.06, min(length, 0.2))
        radius = math.hypot(length, width) / 2
        if rng.uniform() < 0.6 and roads:  # most buildings align with a road
            anchor, direction, _ = roads[rng.integers(len(roads))]
            angle = math.atan2(direction[1], direction[0]) + rng.integers(2) * math.pi / 2
        else:
            angle = rng.uniform(0, math.pi)
        if _road_distance(centre, roads) < radius + 0.01 or any(
                np.hypot(*(centre - c)) < radius + r + 0.02 for c, r in spots):
            continue
        roof = _hsv(rng, (0.15, 0.75), (0.45, 0.95))
        wall = 0.8 * (0.5 * roof + 0.5 * np.array([190, 180, 165]))
        detail = None
        if rng.uniform() < 0.5:
            detail = _rectangle(centre + rng.uniform(-0.2, 0.2, 2) * min(length, width),
                                length * rng.uniform(0.25, 0.45), width * rng.uniform(0.25, 0.45), angle)
        detail_colour = roof * 0.7 if rng.uniform() < 0.5 else np.array([200.0, 200, 200])
        buildings.append(Building(_rectangle(centre, length, width, angle), rng.uniform(0.03, 0.16),
                                  roof, wall, detail, detail_colour))
        spots.append((centre, radius))

    trees = []
    for _ in range(rng.integers(8, 30)):
        centre, radius = rng.uniform(-1.1, 1.1, 2), rng.uniform(0.015, 0.04)
        if _road_distance(centre, roads) < radius or any(
                np.hypot(*(centre - c)) < radius + r for c, r in spots):
            continue
        colour = np.array([rng.uniform(40, 80), rng.uniform(80, 130), rng.uniform(30, 60)])
        trees.append(Tree(centre, radius, rng.uniform(0.02, 0.06), colour))

    sun_angle = rng.uniform(0, 2 * math.pi)
    sun = rng.uniform(0.3, 0.8) * np.array([math.cos(sun_angle), math.sin(sun_angle)])
    return Scene(ground, base, tuple(buildings), tuple(trees), sun)


# ---------------------------------------------------------------------------------------------
# Views and rendering


@dataclass(frozen=True)
class View:
    corners: np.ndarray  # (4, 2) world points seen at the image corners TL, TR, BR, BL
    forward: np.ndarray  # unit world vector pointing up the image (away from the camera)
    lean: float  # roof displacement per unit height along ``forward`` (0: orthographic)
    sun: np.ndarray


@dataclass(frozen=True)
class Photometry:
    """Ranges of the per-image lighting and sensor changes."""
    colour: float = 0.03  # per-channel gain spread
    brightness: float = 0.05
    contrast: float = 0.05
    haze: float = 0.05  # maximum blend towards a bright haze colour
    noise: float = 2.0  # pixel noise std (0-255 scale)


SATELLITE_LOOK = Photometry()
DRONE_LOOK = Photometry(colour=0.08, brightness=0.15, contrast=0.15, haze=0.2, noise=3.0)
GOOGLE_LOOK = Photometry(colour=0.15, brightness=0.25, contrast=0.25, haze=0.3, noise=5.0)


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 ``H`` with ``dst ~ H @ src`` for four point pairs (DLT with h33 = 1).

    Hand-written: it is one 8x8 solve, and no project dependency ships it (OpenCV and
    scikit-image are not requirements).
    """
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    return np.append(np.linalg.solve(np.array(rows, float), np.array(rhs, float)), 1).reshape(3, 3)


def satellite_view(sun: np.ndarray) -> View:
    h = SATELLITE_HALF
    return View(np.array([[-h, h], [h, h], [h, -h], [-h, -h]]), np.array([0.0, 1.0]), 0.0, sun)


def drone_view(rng: np.random.Generator, sun: np.ndarray, half_size: float,
               tilt: Tuple[float, float]) -> View:
    """Oblique view: the ground footprint is a trapezoid, wider at the far (top) edge.

    ``half_size`` (altitude) sets the field of view, ``tilt`` the trapezoid's taper and how far
    roofs lean away from the camera, exposing the walls that face it.
    """
    heading = rng.uniform(0, 2 * math.pi)
    forward = np.array([math.cos(heading), math.sin(heading)])
    right = np.array([forward[1], -forward[0]])
    t = rng.uniform(*tilt)
    c = rng.normal(0, 0.05, 2)
    s = half_size
    corners = np.array([c - s * (1 + t) * right + s * forward, c + s * (1 + t) * right + s * forward,
                        c + s * (1 - t) * right - s * forward, c - s * (1 - t) * right - s * forward])
    turn = rng.uniform(-0.7, 0.7)  # another time of day
    rotation = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    return View(corners, forward, 0.3 + 1.5 * t, rng.uniform(0.7, 1.3) * rotation @ sun)


def _project(world_to_px: np.ndarray, polygons):
    """Project ``(points, colour)`` world polygons into the view in one batch.

    Polygons touching the camera's horizon line (w <= 0.05) lie far below the image and would
    fold over under the homography, so they are dropped.
    """
    if not polygons:
        return []
    points = np.concatenate([p for p, _ in polygons])
    p = points @ world_to_px[:, :2].T + world_to_px[:, 2]
    xy = (p[:, :2] / p[:, 2:]).tolist()
    ok = p[:, 2] > 0.05
    out, start = [], 0
    for points_i, colour in polygons:
        stop = start + len(points_i)
        if ok[start:stop].all():
            out.append(([tuple(v) for v in xy[start:stop]], colour))
        start = stop
    return out


def _fill(image: Image.Image, world_to_px: np.ndarray, polygons):
    draw = ImageDraw.Draw(image)
    for points, colour in _project(world_to_px, polygons):
        draw.polygon(points, fill=colour)


def _sweep(footprint: np.ndarray, offset: np.ndarray):
    """Polygons covering a convex footprint swept along ``offset`` (shadows, extruded walls)."""
    yield footprint + offset
    for i in range(len(footprint)):
        p, q = footprint[i], footprint[(i + 1) % len(footprint)]
        yield np.array([p, q, q + offset, p + offset])


def _outward_normal(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    edge = q - p
    return np.array([edge[1], -edge[0]]) / np.hypot(*edge)


def _shadow_polygons(scene: Scene, view: View):
    for b in scene.buildings:
        for polygon in _sweep(b.footprint, b.height * view.sun):
            yield polygon, 255
    for t in scene.trees:
        yield _circle(t.centre + t.height * view.sun, t.radius), 255


def _building_polygons(b: Building, view: View):
    lift = b.height * view.lean * view.forward
    if view.lean > 0:
        light = -view.sun / np.hypot(*view.sun)
        for i in range(4):
            p, q = b.footprint[i], b.footprint[(i + 1) % 4]
            normal = _outward_normal(p, q)
            if normal @ view.forward < 0:  # the wall faces the camera
                shade = 0.6 + 0.4 * max(0.0, normal @ light)
                yield np.array([p, q, q + lift, p + lift]), _colour(b.wall * shade)
    yield b.footprint + lift, _colour(b.roof)
    if b.detail is not None:
        yield b.detail + 1.15 * lift, _colour(b.detail_colour)


def _tree_polygons(t: Tree, view: View):
    centre = t.centre + t.height * view.lean * view.forward
    yield _circle(centre, t.radius), _colour(t.colour)
    light = -view.sun / np.hypot(*view.sun)
    yield _circle(centre + 0.35 * t.radius * light, 0.5 * t.radius, 8), _colour(t.colour * 1.25)


def _occlude(image: Image.Image, rng: np.random.Generator):
    """A dark blob at an image edge: a branch or part of the drone in front of the camera."""
    size = image.width
    side = rng.integers(4)
    along, r = rng.uniform(0, size), rng.uniform(0.1, 0.25) * size
    x, y = [(along, 0), (size, along), (along, size), (0, along)][side]
    colour = (30, 50, 25) if rng.uniform() < 0.5 else (55, 55, 60)
    ImageDraw.Draw(image).ellipse([x - r, y - 0.7 * r, x + r, y + 0.7 * r], fill=colour)


def _photometric(image: Image.Image, rng: np.random.Generator, look: Photometry) -> Image.Image:
    pixels = np.asarray(image, np.float32)
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(1 - look.contrast, 1 + look.contrast) + mean
    pixels *= rng.uniform(1 - look.colour, 1 + look.colour, 3) * rng.uniform(1 - look.brightness,
                                                                              1 + look.brightness)
    haze = rng.uniform(0, look.haze)
    pixels = (1 - haze) * pixels + haze * HAZE
    pixels += rng.normal(0, look.noise, pixels.shape)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def render(scene: Scene, view: View, size: int, rng: np.random.Generator, look: Photometry,
           occlude: bool = False) -> Image.Image:
    """Render ``scene`` as seen by ``view`` into a ``size`` x ``size`` RGB image."""
    work = size * SUPERSAMPLE
    world_to_px = _homography(view.corners, np.array([[0, 0], [work, 0], [work, work], [0, work]]))
    world_to_px /= (world_to_px @ np.append(view.corners.mean(0), 1))[2]  # w = 1 at the centre
    px_to_ground = scene.ground_from_world @ np.linalg.inv(world_to_px)
    px_to_ground /= px_to_ground[2, 2]
    image = scene.ground.transform((work, work), Image.PERSPECTIVE, tuple(px_to_ground.ravel()[:8]),
                                   Image.BILINEAR, fillcolor=_colour(scene.base))
    mask = Image.new("L", (work, work), 0)
    _fill(mask, world_to_px, list(_shadow_polygons(scene, view)))
    image = Image.composite(image.point(lambda v: int(v * 0.55)), image, mask)
    # Painter's order: far objects first, so nearer roofs and walls cover them.
    objects = [(b.footprint.mean(0) @ view.forward, _building_polygons(b, view)) for b in scene.buildings]
    objects += [(t.centre @ view.forward, _tree_polygons(t, view)) for t in scene.trees]
    objects.sort(key=lambda o: -o[0])
    _fill(image, world_to_px, [polygon for _, polygons in objects for polygon in polygons])
    if occlude and rng.uniform() < 0.5:
        _occlude(image, rng)
    return _photometric(image.reduce(SUPERSAMPLE), rng, look)


def render_street(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """Ground-level view: facades of the buildings ahead, over sky and ground."""
    work = size * SUPERSAMPLE
    horizon = work * rng.uniform(0.45, 0.6)
    image = Image.new("RGB", (work, work), _colour(scene.base))
    draw = ImageDraw.Draw(image)
    for y in range(int(horizon)):
        draw.line([(0, y), (work, y)], fill=(int(120 + 60 * y / horizon), int(160 + 40 * y / horizon), 225))
    heading = rng.uniform(0, 2 * math.pi)
    forward = np.array([math.cos(heading), math.sin(heading)])
    right = np.array([forward[1], -forward[0]])
    camera, focal, eye = -0.9 * forward + rng.normal(0, 0.1, 2), 0.6 * work, 0.015
    facades = []
    for b in scene.buildings:
        depth = (b.footprint - camera) @ forward
        if (depth < 0.1).any():
            continue
        x = work / 2 + focal * ((b.footprint - camera) @ right) / depth
        near = depth.min()
        facades.append((near, x.min(), x.max(), horizon + focal * eye / near,
                        horizon + focal * (eye - 3 * b.height) / near, b))
    for near, left, right_x, bottom, top, b in sorted(facades, key=lambda f: -f[0]):
        draw.rectangle([left, top, right_x, bottom], fill=_colour(b.wall))
        draw.rectangle([left, top, right_x, top + 0.12 * (bottom - top)], fill=_colour(b.roof))
        step = max(4.0, (right_x - left) / 8)
        for wx in np.arange(left + step / 2, right_x - step / 2, step):
            for wy in np.arange(top + 0.25 * (bottom - top), bottom - step, step):
                draw.rectangle([wx, wy, wx + step / 2, wy + step / 2], fill=_colour(b.wall * 0.5))
    return _photometric(image.reduce(SUPERSAMPLE), rng, DRONE_LOOK)


# ---------------------------------------------------------------------------------------------
# Writing datasets


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
        raise UserError(f"--out {out} is a file; expected a folder for the synthetic dataset")
    previous = [out / split for split in ("train", "test") if (out / split).exists()]
    if previous and not (out / MANIFEST).is_file():
        raise UserError(f"--out {out} already holds {previous[0].name}/ that this generator did not write; "
                        "expected an empty or new folder")
    for path in previous:
        shutil.rmtree(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _finish(writer: _Writer, layout: str, parameters: dict) -> dict:
    summary = {"layout": layout, "root": str(writer.root), "parameters": parameters,
               "folders": writer.summary()}
    manifest = {k: v for k, v in summary.items() if k != "root"}
    (writer.root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return summary


def _check_counts(**counts):
    for name, (value, minimum) in counts.items():
        if int(value) != value or value < minimum:
            raise UserError(f"--{name.replace('_', '-')} {value}: expected an integer >= {minimum}")


def _satellite(scene: Scene, seed: int, place: int, size: int) -> Image.Image:
    return render(scene, satellite_view(scene.sun), size, _rng(seed, place, _SATELLITE), SATELLITE_LOOK)


def _oblique_files(scene: Scene, size: int, names: Sequence[str], rngs, half_size: Callable,
                   tilt: Tuple[float, float], look: Photometry = DRONE_LOOK) -> list:
    """Encoded oblique renders, one per name; ``half_size(rng)`` draws each view's altitude."""
    files = []
    for name, rng in zip(names, rngs):
        view = drone_view(rng, scene.sun, half_size(rng), tilt)
        files.append((name, _encode(render(scene, view, size, rng, look, occlude=True))))
    return files


def generate_university(out, *, train_places: int = 40, test_places: int = 30,
                        distractor_places: int = 10, drones_per_place: int = 8,
                        image_size: int = 128, seed: int = 0, street_per_place: int = 2,
                        google_per_place: int = 2) -> dict:
    """Write a University-1652-like dataset under ``out``; returns a summary of the folders.

    Test places get ids 0000.., train places continue after them, then the distractors, which
    appear only in the galleries. About one train place in eight (at least one) has an empty
    google folder, as some classes have no google images in the real data.
    """
    _check_counts(train_places=(train_places, 1), test_places=(test_places, 1),
                  distractor_places=(distractor_places, 0), drones=(drones_per_place, 1),
                  size=(image_size, 32), street_per_place=(street_per_place, 0),
                  google_per_place=(google_per_place, 0))
    writer = _Writer(_prepare_output(out))
    test_ids = range(test_places)
    train_ids = range(test_places, test_places + train_places)
    distractor_ids = range(train_ids.stop, train_ids.stop + distractor_places)
    no_google = set(_rng(seed, 0, _CHOICE).permutation(train_ids)[:max(1, train_places // 8)].tolist())
    drone_names = [f"image-{k + 1:02d}.jpeg" for k in range(drones_per_place)]

    for place in [*test_ids, *train_ids, *distractor_ids]:
        cid = f"{place:04d}"
        scene = make_scene(seed, place, image_size)
        satellite = [(f"{cid}.jpg", _encode(_satellite(scene, seed, place, image_size)))]
        drones = _oblique_files(scene, image_size, drone_names,
                                (_rng(seed, place, _DRONE, k) for k in range(drones_per_place)),
                                lambda rng: rng.uniform(0.3, 0.5), (0.1, 0.45))
        if place in train_ids:
            writer.write("train/satellite", cid, satellite)
            writer.write("train/drone", cid, drones)
            streets = [render_street(scene, image_size, _rng(seed, place, _STREET, k))
                       for k in range(street_per_place)]
            writer.write("train/street", cid, [(f"street-{k + 1:02d}.jpg", _encode(image))
                                               for k, image in enumerate(streets)])
            google = 0 if place in no_google else google_per_place
            writer.write("train/google", cid, _oblique_files(
                scene, image_size, [f"google-{k + 1:02d}.jpg" for k in range(google)],
                (_rng(seed, place, _GOOGLE, k) for k in range(google)),
                lambda rng: rng.uniform(0.2, 0.35), (0.35, 0.5), GOOGLE_LOOK))
            continue
        writer.write("test/gallery_satellite", cid, satellite)
        writer.write("test/gallery_drone", cid, drones)
        if place in test_ids:
            writer.write("test/query_satellite", cid, satellite)
            writer.write("test/query_drone", cid, drones)

    return _finish(writer, "university", dict(
        train_places=train_places, test_places=test_places, distractor_places=distractor_places,
        drones_per_place=drones_per_place, image_size=image_size, seed=seed,
        street_per_place=street_per_place, google_per_place=google_per_place))


def generate_sues(out, *, places: int = 50, train_places: int = 30, drones_per_place: int = 8,
                  image_size: int = 128, altitudes: Sequence[int] = SUES_ALTITUDES, seed: int = 0) -> dict:
    """Write a SUES-200-like dataset under ``out``; returns a summary of the folders.

    Ids run 0001..; the first ``train_places`` are training places, the rest test places.
    Queries hold the test places, galleries every place. One satellite image per place (the same
    at every altitude); drone views widen in proportion to the altitude.
    """
    _check_counts(places=(places, 2), train_places=(train_places, 1), drones=(drones_per_place, 1),
                  size=(image_size, 32))
    if train_places >= places:
        raise UserError(f"--train-places {train_places}: expected fewer than --places {places} "
                        "so that some places are left for testing")
    altitudes = [int(a) for a in altitudes]
    if not altitudes or min(altitudes) <= 0 or len(set(altitudes)) != len(altitudes):
        raise UserError(f"--altitudes {altitudes}: expected distinct positive altitudes in metres")
    writer = _Writer(_prepare_output(out))
    drone_names = [f"{k}.jpg" for k in range(drones_per_place)]

    for place in range(1, places + 1):
        cid = f"{place:04d}"
        is_train = place <= train_places
        scene = make_scene(seed, place, image_size)
        satellite = [("0.png", _encode(_satellite(scene, seed, place, image_size), "PNG"))]
        for altitude in altitudes:
            drones = _oblique_files(scene, image_size, drone_names,
                                    (_rng(seed, place, _DRONE, altitude, k) for k in range(drones_per_place)),
                                    lambda rng: SUES_HALF_SIZE_PER_METRE * altitude * rng.uniform(0.92, 1.08),
                                    (0.05, 0.35))
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


# ---------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datasets.synthetic",
        description="Generate a small deterministic dataset with the University-1652 or SUES-200 layout.")
    parser.add_argument("--layout", choices=("university", "sues"), default="university",
                        help="folder layout to imitate (default: university)")
    parser.add_argument("--out", required=True,
                        help="dataset root to write train/ and test/ into (a folder this generator "
                             "wrote before is replaced; any other non-empty train/ or test/ is refused)")
    parser.add_argument("--train-places", type=int, default=None,
                        help="training places (default: 40 for university, 30 for sues)")
    parser.add_argument("--test-places", type=int, default=30,
                        help="university: test places, ids from 0000 (default: 30)")
    parser.add_argument("--distractor-places", type=int, default=10,
                        help="university: extra places found only in the galleries (default: 10)")
    parser.add_argument("--places", type=int, default=50,
                        help="sues: all places, train and test (default: 50)")
    parser.add_argument("--drones", type=int, default=8,
                        help="drone images per place (per altitude for sues) (default: 8)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    parser.add_argument("--altitudes", type=int, nargs="+", default=list(SUES_ALTITUDES),
                        help="sues: altitude folders in metres; higher means a wider drone view "
                             "(default: 150 200 250 300)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; equal seeds give identical files")
    return parser


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    if args.layout == "university":
        summary = generate_university(
            args.out, train_places=40 if args.train_places is None else args.train_places,
            test_places=args.test_places, distractor_places=args.distractor_places,
            drones_per_place=args.drones, image_size=args.size, seed=args.seed)
    else:
        summary = generate_sues(
            args.out, places=args.places, train_places=30 if args.train_places is None else args.train_places,
            drones_per_place=args.drones, image_size=args.size, altitudes=args.altitudes, seed=args.seed)
    print(f"wrote {summary['layout']} dataset to {summary['root']} in {time.perf_counter() - start:.1f}s")
    for folder, count in summary["folders"].items():
        print(f"  {folder:<28} {count['classes']:5d} classes {count['images']:6d} images")
    return summary


if __name__ == "__main__":
    main()
