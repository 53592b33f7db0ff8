"""Views of a scene: cameras, painter's-order polygon drawing, lighting and sensor changes.

A view is the world quadrilateral seen at the image corners; one homography maps the ground
raster and every roof, wall, shadow and tree polygon into it, so all views of a place agree on
its layout while their pixels differ.
"""
import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np
from PIL import Image, ImageDraw

from .scene import Building, Scene, Tree, colour_tuple

SATELLITE_HALF = 0.55  # the satellite image covers [-SATELLITE_HALF, SATELLITE_HALF]^2
SUPERSAMPLE = 2  # views are drawn at this multiple of the output size, then box-filtered
HAZE = np.array([200.0, 205.0, 215.0])


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


def _circle(centre, radius, n=10) -> np.ndarray:
    a = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return centre + radius * np.stack([np.cos(a), np.sin(a)], 1)


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
                yield np.array([p, q, q + lift, p + lift]), colour_tuple(b.wall * shade)
    yield b.footprint + lift, colour_tuple(b.roof)
    if b.detail is not None:
        yield b.detail + 1.15 * lift, colour_tuple(b.detail_colour)


def _tree_polygons(t: Tree, view: View):
    centre = t.centre + t.height * view.lean * view.forward
    yield _circle(centre, t.radius), colour_tuple(t.colour)
    light = -view.sun / np.hypot(*view.sun)
    yield _circle(centre + 0.35 * t.radius * light, 0.5 * t.radius, 8), colour_tuple(t.colour * 1.25)


def _occlude(image: Image.Image, rng: np.random.Generator):
    """A dark blob at an image edge: a branch or part of the drone in front of the camera."""
    size = image.width
    side = rng.integers(4)
    along, r = rng.uniform(0, size), rng.uniform(0.1, 0.25) * size
    x, y = [(along, 0), (size, along), (along, size), (0, along)][side]
    colour = (30, 50, 25) if rng.uniform() < 0.5 else (55, 55, 60)
    ImageDraw.Draw(image).ellipse([x - r, y - 0.7 * r, x + r, y + 0.7 * r], fill=colour)


def photometric(image: Image.Image, rng: np.random.Generator, look: Photometry) -> Image.Image:
    """Per-image contrast, colour gain, haze and sensor noise drawn from the ranges of ``look``."""
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
                                   Image.BILINEAR, fillcolor=colour_tuple(scene.base))
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
    return photometric(image.reduce(SUPERSAMPLE), rng, look)
