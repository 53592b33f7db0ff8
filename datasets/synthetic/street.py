"""Ground-level views of a place: street photos and the noisier google image-search frames.

A pinhole camera about 2 m above one of the place's roads looks towards its buildings (mostly
the landmark, with a random heading error). Walls, roofs (a hip roof or a roof-coloured fascia
with its roof structure) and trees are projected in 3D, clipped at the near plane and drawn far
to near, so nearer buildings and trees hide farther ones. The buildings' wall and roof colours,
shapes and storeys are all a street image shares with the satellite image: sky, ground, road
surface, the skyline behind, the light and the foreground clutter (parked cars, poles, foliage)
are drawn per image from palettes that do not depend on the place, so neither a background
colour nor a colour histogram gives the place away.
"""
import math
from dataclasses import dataclass
from typing import Iterator, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .render import SUPERSAMPLE, Photometry, photometric
from .scene import Building, Scene, Tree, colour_tuple, random_hsv

EYE = 0.01  # camera height in world units: about 2 m where the landmark's 0.18-0.32 are 35-60 m
# Scene heights are tuned as the drone views' roof displacement and are squat as walls.
HEIGHT_SCALE = 2.0
NEAR = 0.004  # near clipping plane, in world units in front of the lens
STOREY = 0.02  # wall height per row of windows
WINDOW_PITCH = 0.03  # wall length per column of windows
GROUND_COLOURS = ((105, 105, 100), (150, 145, 135), (95, 120, 70), (135, 120, 95), (120, 128, 118))
STREET_LOOK = Photometry(colour=0.1, brightness=0.2, contrast=0.2, haze=0.15, noise=3.0)
GOOGLE_LOOK = Photometry(colour=0.2, brightness=0.3, contrast=0.3, haze=0.3, noise=6.0)
STREET_CLUTTER, GOOGLE_CLUTTER = 0.6, 1.8  # mean number of foreground occluders per image


@dataclass(frozen=True)
class Camera:
    position: np.ndarray  # (3,) world point of the lens
    axes: np.ndarray  # (3, 3) rows: the right, up and forward unit vectors in world coordinates
    focal: float  # in pixels
    centre: float  # pixel coordinate of the principal point on both image axes

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World ``(n, 3)`` points to camera coordinates (x right, y up, z forward)."""
        return (points - self.position) @ self.axes.T

    def to_pixels(self, camera_points: np.ndarray) -> np.ndarray:
        z = camera_points[:, 2]
        return np.stack([self.centre + self.focal * camera_points[:, 0] / z,
                         self.centre - self.focal * camera_points[:, 1] / z], 1)


def street_camera(scene: Scene, rng: np.random.Generator, work: int) -> Camera:
    """A lens on a road beside the landmark (sometimes another building), facing it roughly;
    the centre stands in for the landmark of a place whose roads left no room for buildings."""
    aims = [b.footprint.mean(0) for b in scene.buildings] or [np.zeros(2)]
    aim = aims[0 if rng.uniform() < 0.6 else rng.integers(len(aims))]
    anchor, direction, width = scene.roads[rng.integers(len(scene.roads))]
    across = np.array([-direction[1], direction[0]])
    foot = anchor + ((aim - anchor) @ direction) * direction  # the road's point nearest the target
    spot = foot + rng.choice([-1, 1]) * rng.uniform(0.15, 0.55) * direction
    spot = spot + rng.uniform(-0.45, 0.45) * width * across
    heading = math.atan2(*(aim - spot)[::-1]) + rng.normal(0, 0.2)
    pitch = rng.uniform(0.03, 0.22)  # looking up at the buildings
    forward = np.array([math.cos(heading), math.sin(heading), 0.0])
    right = np.array([forward[1], -forward[0], 0.0])
    axes = np.stack([right, math.cos(pitch) * np.array([0, 0, 1.0]) - math.sin(pitch) * forward,
                     math.cos(pitch) * forward + math.sin(pitch) * np.array([0, 0, 1.0])])
    focal = work / (2 * math.tan(rng.uniform(0.5, 0.7)))  # 57-80 degrees across
    return Camera(np.array([*spot, EYE]), axes, focal, work / 2)


def _clip(points: np.ndarray) -> np.ndarray:
    """The part of a convex polygon (camera coordinates) in front of the near plane."""
    inside = points[:, 2] >= NEAR
    if inside.all():
        return points
    kept = []
    for i in range(len(points)):
        j = (i + 1) % len(points)
        if inside[i]:
            kept.append(points[i])
        if inside[i] != inside[j]:
            p, q = points[i], points[j]
            kept.append(p + (NEAR - p[2]) / (q[2] - p[2]) * (q - p))
    return np.array(kept).reshape(-1, 3)


def _polygon(draw: ImageDraw.ImageDraw, camera: Camera, points: np.ndarray, colour):
    clipped = _clip(camera.to_camera(points))
    if len(clipped) >= 3:
        draw.polygon([tuple(p) for p in camera.to_pixels(clipped).tolist()], fill=colour_tuple(colour))


def _walls(footprint: np.ndarray, bottom: float, top: float) -> Iterator[np.ndarray]:
    for i in range(len(footprint)):
        p, q = footprint[i], footprint[(i + 1) % len(footprint)]
        yield np.array([[*p, bottom], [*q, bottom], [*q, top], [*p, top]])


def _hip_roof(footprint: np.ndarray, base: float) -> Iterator[np.ndarray]:
    """Four slopes over a rectangle whose first edge is its long side."""
    c0, c1, c2, c3 = footprint
    half_length, half_width = np.hypot(*(c1 - c0)) / 2, np.hypot(*(c3 - c0)) / 2
    ridge = (1 - half_width / half_length) * (c1 - c0) / 2
    top = base + 1.2 * half_width
    r0, r1 = [*(footprint.mean(0) - ridge), top], [*(footprint.mean(0) + ridge), top]
    lift = [[*c, base] for c in footprint]
    yield from (np.array(face) for face in ([lift[0], lift[1], r1, r0], [lift[1], lift[2], r1],
                                            [lift[2], lift[3], r0, r1], [lift[3], lift[0], r0]))


def _solid(b: Building) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray, bool]]:
    """``(face, colour, interior point, is_wall)`` of a building; roof structures come first,
    as the camera below the roof sees them only above the walls drawn after them."""
    height = HEIGHT_SCALE * b.height
    inside = np.array([*b.footprint.mean(0), height / 2])
    if b.detail is None:
        for face in _hip_roof(b.footprint, height):
            yield face, b.roof, inside, False
    else:
        box = min(0.04, 0.3 * height)
        box_inside = np.array([*b.detail.mean(0), height + box / 2])
        for face in _walls(b.detail, height, height + box):
            yield face, b.detail_colour, box_inside, False
    fascia = 0.0 if b.detail is None else 0.15 * height
    for face in _walls(b.footprint, 0.0, height - fascia):
        yield face, b.wall, inside, True
    if fascia:
        for face in _walls(b.footprint, height - fascia, height):
            yield face, b.roof, inside, False


def _windows(draw, camera: Camera, wall: np.ndarray, glass: np.ndarray):
    """A grid of windows, one row per storey, on a wall quad (bottom edge first)."""
    p, q, top = wall[0, :2], wall[1, :2], wall[2, 2]
    columns, rows = int(np.hypot(*(q - p)) / WINDOW_PITCH), int(top / STOREY)
    if columns < 1 or rows < 1:
        return
    s = (np.arange(columns)[:, None] + np.array([0.3, 0.7, 0.7, 0.3])) / columns  # (columns, 4)
    t = (np.arange(rows)[:, None] + np.array([0.35, 0.35, 0.8, 0.8])) * top / rows  # (rows, 4)
    xy = p + s[:, None, :, None] * (q - p)  # (columns, 1, 4, 2)
    corners = np.concatenate([np.broadcast_to(xy, (columns, rows, 4, 2)),
                              np.broadcast_to(t[None, :, :, None], (columns, rows, 4, 1))], -1)
    cam = camera.to_camera(corners.reshape(-1, 3)).reshape(-1, 4, 3)
    cam = cam[(cam[:, :, 2] > NEAR).all(1)]
    pixels = camera.to_pixels(cam.reshape(-1, 3)).reshape(-1, 4, 2)
    colour = colour_tuple(glass)
    for window in pixels[np.ptp(pixels[:, :, 0], 1) >= 1.0].tolist():
        draw.polygon([tuple(v) for v in window], fill=colour)


def _draw_building(draw, camera: Camera, b: Building, light: np.ndarray, glass: np.ndarray):
    """Faces turned towards the lens, lit by ``light``; a convex solid's visible faces never overlap."""
    for face, colour, inside, is_wall in _solid(b):
        (ax, ay, az), (bx, by, bz) = (face[1] - face[0]).tolist(), (face[2] - face[0]).tolist()
        normal = np.array([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx])  # np.cross is slow
        normal = normal * np.sign(normal @ (face[0] - inside)) / np.linalg.norm(normal)
        if normal @ (camera.position - face[0]) <= 0:
            continue
        _polygon(draw, camera, face, colour * (0.55 + 0.45 * max(0.0, normal @ light)))
        if is_wall:
            _windows(draw, camera, face, glass)


def _draw_tree(draw, camera: Camera, t: Tree, shade: float):
    height = HEIGHT_SCALE * t.height
    cam = camera.to_camera(np.array([[*t.centre, 0.0], [*t.centre, 0.7 * height]]))
    if (cam[:, 2] < NEAR).any():
        return
    (bx, by), (cx, cy) = camera.to_pixels(cam).tolist()
    rx = camera.focal * t.radius / cam[1, 2]
    ry = camera.focal * max(t.radius, 0.4 * height) / cam[1, 2]
    draw.line([(bx, by), (cx, cy)], fill=(70, 55, 40), width=max(1, int(0.3 * rx)))
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour_tuple(t.colour * shade))


def _backdrop(rng: np.random.Generator, work: int, horizon: float) -> Image.Image:
    """Sky (clear to overcast), a distant skyline and bare ground, none of them from the place."""
    clear = rng.uniform([60, 110, 190], [120, 170, 250])
    sky_top = (w := rng.uniform()) * clear + (1 - w) * rng.uniform(140, 215)
    sky_low = np.minimum(255, sky_top + rng.uniform(15, 60))
    ground = np.array(GROUND_COLOURS[rng.integers(len(GROUND_COLOURS))]) + rng.normal(0, 12, 3)
    rows = np.arange(work, dtype=np.float32)[:, None]
    sky = sky_top + (sky_low - sky_top) * np.clip(rows / horizon, 0, 1)
    floor = ground * (0.85 + 0.3 * np.clip((rows - horizon) / (work - horizon), 0, 1))
    colours = np.where(rows < horizon, sky, floor)
    image = Image.fromarray(np.repeat(colours[:, None], work, 1).clip(0, 255).astype(np.uint8))
    draw, x = ImageDraw.Draw(image), 0.0
    while rng.uniform() < 0.8 and x < work:  # far buildings, pale with haze
        step = work * rng.uniform(0.04, 0.15)
        colour = 0.5 * sky_low + 0.5 * random_hsv(rng, (0, 0.3), (0.3, 0.8))
        draw.rectangle([x, horizon - work * rng.uniform(0.01, 0.1), x + step, horizon], fill=colour_tuple(colour))
        x += step * rng.uniform(1, 2.5)
    return image


def _clutter(draw, rng: np.random.Generator, work: int, mean: float):
    """Foreground occluders: parked cars, poles and overhanging foliage."""
    for _ in range(rng.poisson(mean)):
        x, kind = rng.uniform(-0.1, 1) * work, rng.integers(3)
        if kind == 0:
            w = rng.uniform(0.25, 0.6) * work
            top = work - rng.uniform(0.15, 0.3) * w
            draw.rectangle([x, top, x + w, work], fill=colour_tuple(random_hsv(rng, (0, 0.8), (0.2, 0.9))))
            draw.rectangle([x + 0.2 * w, top - 0.2 * w, x + 0.8 * w, top], fill=(40, 45, 55))
        elif kind == 1:
            draw.rectangle([x, rng.uniform(0, 0.4) * work, x + rng.uniform(0.01, 0.04) * work, work],
                           fill=colour_tuple(rng.uniform(30, 90, 3)))
        else:
            r = rng.uniform(0.15, 0.4) * work
            colour = (rng.uniform(25, 70), rng.uniform(50, 110), rng.uniform(20, 50))
            draw.ellipse([x - r, -r * rng.uniform(0.3, 1), x + r, r], fill=colour_tuple(colour))


def render_street(scene: Scene, size: int, rng: np.random.Generator, look: Photometry = STREET_LOOK,
                  clutter: float = STREET_CLUTTER) -> Image.Image:
    """Ground-level perspective photo of ``scene``; ``clutter`` is the mean number of occluders."""
    work = size * SUPERSAMPLE
    camera = street_camera(scene, rng, work)
    forward = camera.axes[2]
    horizon = camera.centre + camera.focal * forward[2] / math.hypot(*forward[:2])
    image = _backdrop(rng, work, horizon)
    draw = ImageDraw.Draw(image)
    road = rng.uniform(55, 110) + rng.normal(0, 4, 3)
    for anchor, direction, width in scene.roads:
        across = np.array([-direction[1], direction[0]]) * width / 2
        ends = [anchor - 4 * direction, anchor + 4 * direction]
        quad = [ends[0] - across, ends[1] - across, ends[1] + across, ends[0] + across]
        _polygon(draw, camera, np.array([[*p, 0.0] for p in quad]), road)
    azimuth, elevation = rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 1.2)
    light = np.array([math.cos(azimuth) * math.cos(elevation), math.sin(azimuth) * math.cos(elevation),
                      math.sin(elevation)])
    glass = rng.uniform(30, 90) + rng.uniform(0, 60, 3)
    shade = rng.uniform(0.7, 1.2)
    objects = [(b.footprint.mean(0), b) for b in scene.buildings] + [(t.centre, t) for t in scene.trees]
    for _, item in sorted(objects, key=lambda o: -np.hypot(*(o[0] - camera.position[:2]))):
        if isinstance(item, Building):
            _draw_building(draw, camera, item, light, glass)
        else:
            _draw_tree(draw, camera, item, shade)
    _clutter(draw, rng, work, clutter)
    return photometric(image.reduce(SUPERSAMPLE), rng, look)


def render_google(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """A google image-search frame: a street photo with more occluders and stronger colour shifts.

    Ground level rather than oblique: the real google images are mostly photos taken from the
    street by visitors, so they share the street view's geometry, not the drone's.
    """
    return render_street(scene, size, rng, GOOGLE_LOOK, GOOGLE_CLUTTER)
