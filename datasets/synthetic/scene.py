"""The procedural place: a vector scene of ground, fields, roads, buildings and trees.

Every random draw comes from a generator keyed by ``(seed, place, stream, ...)``, so one place or
view never depends on how many others are generated, and the same seed gives the same scene.
"""
import colorsys
import math
from dataclasses import dataclass
from enum import IntEnum
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

WORLD = 1.2  # the scene spans [-WORLD, WORLD]^2 in world units (y points north)
LAND_COVERS = ((92, 118, 64), (146, 138, 96), (128, 110, 86), (138, 138, 132), (104, 124, 92))
FIELD_COLOURS = ((70, 110, 50), (170, 160, 100), (110, 90, 70), (150, 150, 150), (70, 95, 120))


class Stream(IntEnum):
    """Independent random streams of one place; the values are part of the seed, keep them."""
    SCENE = 0
    SATELLITE = 1
    DRONE = 2
    STREET = 3
    GOOGLE = 4
    CHOICE = 5
    QUERY_STREET = 6
    GALLERY_STREET = 7
    NEIGHBOUR = 8


def place_rng(seed: int, place: int, stream: Stream, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, place, int(stream), *keys])


def colour_tuple(rgb) -> tuple:
    """Integer RGB clipped to 0..255, as PIL's drawing calls want it."""
    return tuple(min(255, max(0, int(c))) for c in rgb)


Road = Tuple[np.ndarray, np.ndarray, float]  # anchor point, unit direction, width


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
    base: np.ndarray  # dominant ground colour, also what views see beyond the raster
    buildings: Tuple[Building, ...]
    trees: Tuple[Tree, ...]
    sun: np.ndarray  # shadow offset per unit of height, in world units
    roads: Tuple[Road, ...]  # where street-level cameras stand

    @property
    def ground_from_world(self) -> np.ndarray:
        """3x3 map from world coordinates to ground-raster pixels (image y points south)."""
        k = self.ground.width / (2 * WORLD)
        return np.array([[k, 0, k * WORLD], [0, -k, k * WORLD], [0, 0, 1.0]])


def _rectangle(centre, length, width, angle) -> np.ndarray:
    u = np.array([math.cos(angle), math.sin(angle)]) * length / 2
    v = np.array([-math.sin(angle), math.cos(angle)]) * width / 2
    return np.array([centre - u - v, centre + u - v, centre + u + v, centre - u + v])


def random_hsv(rng, sat, val) -> np.ndarray:
    """RGB of a random hue, with saturation and value drawn from the given ranges."""
    return 255 * np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*sat), rng.uniform(*val)))


def _smooth_noise(rng, cells: int, size: int) -> np.ndarray:
    noise = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(noise, "F").resize((size, size), Image.BICUBIC))


def _road_distance(point, roads: List[Road]) -> float:
    """Distance from ``point`` to the nearest road edge (negative on a road)."""
    gaps = []
    for anchor, direction, width in roads:
        dx, dy = point - anchor
        gaps.append(abs(direction[0] * dy - direction[1] * dx) - width / 2)
    return min(gaps, default=math.inf)


def _paint_ground(rng, res: int) -> Tuple[Image.Image, np.ndarray, List[Road]]:
    """Ground raster (land cover, fields, roads, texture), its base colour and the roads."""
    to_px = res / (2 * WORLD)
    base = np.array(LAND_COVERS[rng.integers(len(LAND_COVERS))]) + rng.normal(0, 10, 3)
    ground = Image.new("RGB", (res, res), colour_tuple(base))
    draw = ImageDraw.Draw(ground)

    def px(points):
        return [((x + WORLD) * to_px, (WORLD - y) * to_px) for x, y in points]

    for _ in range(rng.integers(2, 5)):
        field = _rectangle(rng.uniform(-1, 1, 2), rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.5),
                           rng.uniform(0, math.pi))
        colour = np.array(FIELD_COLOURS[rng.integers(len(FIELD_COLOURS))]) + rng.normal(0, 12, 3)
        draw.polygon(px(field), fill=colour_tuple(colour))

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
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), base, roads


def _building(rng, centre, length, width, angle) -> Building:
    roof = random_hsv(rng, (0.15, 0.75), (0.45, 0.95))
    wall = 0.8 * (0.5 * roof + 0.5 * np.array([190, 180, 165]))
    detail = None
    if rng.uniform() < 0.5:
        detail = _rectangle(centre + rng.uniform(-0.2, 0.2, 2) * min(length, width),
                            length * rng.uniform(0.25, 0.45), width * rng.uniform(0.25, 0.45), angle)
    detail_colour = roof * 0.7 if rng.uniform() < 0.5 else np.array([200.0, 200, 200])
    return Building(_rectangle(centre, length, width, angle), rng.uniform(0.03, 0.16),
                    roof, wall, detail, detail_colour)


def _place_buildings(rng, roads: List[Road]):
    """Non-overlapping buildings off the roads, and the ``(centre, radius)`` spots they take."""
    buildings, spots = [], []
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
            _, direction, _ = roads[rng.integers(len(roads))]
            angle = math.atan2(direction[1], direction[0]) + rng.integers(2) * math.pi / 2
        else:
            angle = rng.uniform(0, math.pi)
        if _road_distance(centre, roads) < radius + 0.01 or any(
                np.hypot(*(centre - c)) < radius + r + 0.02 for c, r in spots):
            continue
        buildings.append(_building(rng, centre, length, width, angle))
        spots.append((centre, radius))
    return buildings, spots


def _place_trees(rng, roads: List[Road], spots) -> List[Tree]:
    trees = []
    for _ in range(rng.integers(8, 30)):
        centre, radius = rng.uniform(-1.1, 1.1, 2), rng.uniform(0.015, 0.04)
        if _road_distance(centre, roads) < radius or any(
                np.hypot(*(centre - c)) < radius + r for c, r in spots):
            continue
        colour = np.array([rng.uniform(40, 80), rng.uniform(80, 130), rng.uniform(30, 60)])
        trees.append(Tree(centre, radius, rng.uniform(0.02, 0.06), colour))
    return trees


def make_scene(seed: int, place: int, image_size: int) -> Scene:
    """Random scene of one place; the ground raster has 4 px per output pixel of width."""
    rng = place_rng(seed, place, Stream.SCENE)
    ground, base, roads = _paint_ground(rng, max(256, 4 * image_size))
    buildings, spots = _place_buildings(rng, roads)
    trees = _place_trees(rng, roads, spots)
    sun_angle = rng.uniform(0, 2 * math.pi)
    sun = rng.uniform(0.3, 0.8) * np.array([math.cos(sun_angle), math.sin(sun_angle)])
    return Scene(ground, base, tuple(buildings), tuple(trees), sun, tuple(roads))
