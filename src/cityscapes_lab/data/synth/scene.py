"""A street scene as polygons, painted back to front, drawn from a seeded random generator.

The camera looks down a straight street: a pinhole camera at ``CAMERA_HEIGHT`` metres over a flat ground, world x to
the right, y up, z ahead. Everything is placed in metres and projected, so sizes fall off with distance as in the
real recordings. A scene is pure data: ``render`` turns it into the label images and the photo.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

CAMERA_HEIGHT = 1.3  # metres over the ground
Z_NEAR = 1.0  # metres; ground polygons start here (well below the image's bottom edge)

# (width, height, length) in metres, per vehicle label, before a +-10% jitter.
VEHICLE_SIZES = {
    "car": (1.8, 1.45, 4.4),
    "truck": (2.5, 3.4, 8.0),
    "bus": (2.55, 3.1, 12.0),
    "caravan": (2.3, 2.6, 6.5),
    "trailer": (2.3, 2.4, 6.0),
    "motorcycle": (0.8, 1.2, 2.1),
    "bicycle": (0.6, 1.05, 1.75),
    "train": (2.65, 3.6, 30.0),
}
VEHICLE_WEIGHTS = {"car": 0.70, "truck": 0.07, "bus": 0.05, "caravan": 0.02, "trailer": 0.02, "motorcycle": 0.06,
                   "bicycle": 0.08}

# A standing person seen from the front or back, feet at y=0, 1.74 m tall (x, y in metres).
PERSON_OUTLINE = np.array([
    (-0.20, 0.00), (-0.06, 0.00), (0.00, 0.75), (0.06, 0.00), (0.20, 0.00), (0.17, 0.85), (0.25, 0.88),
    (0.25, 1.40), (0.08, 1.50), (0.10, 1.58), (0.07, 1.70), (0.00, 1.74), (-0.07, 1.70), (-0.10, 1.58),
    (-0.08, 1.50), (-0.25, 1.40), (-0.25, 0.88), (-0.17, 0.85)])
PERSON_LEGS = np.array([(-0.20, 0.00), (-0.06, 0.00), (0.00, 0.75), (0.06, 0.00), (0.20, 0.00), (0.17, 0.85),
                        (-0.17, 0.85)])
PERSON_HEAD = np.array([(0.10, 1.58), (0.07, 1.70), (0.00, 1.74), (-0.07, 1.70), (-0.10, 1.58), (0.0, 1.52)])
# A seated rider from behind: hips at y=0 (placed on the saddle), 0.95 m from hips to the top of the head.
RIDER_OUTLINE = np.array([
    (-0.22, -0.45), (-0.12, -0.45), (-0.10, 0.00), (0.10, 0.00), (0.12, -0.45), (0.22, -0.45), (0.20, 0.05),
    (0.25, 0.62), (0.08, 0.72), (0.10, 0.80), (0.07, 0.92), (0.00, 0.95), (-0.07, 0.92), (-0.10, 0.80),
    (-0.08, 0.72), (-0.25, 0.62), (-0.20, 0.05)])

FACADE_COLOURS = [(182, 160, 130), (150, 140, 135), (120, 85, 70), (200, 190, 170), (105, 105, 110),
                  (170, 120, 90), (210, 205, 195), (140, 150, 160)]
VEHICLE_COLOURS = [(20, 20, 22), (235, 235, 235), (160, 162, 168), (110, 20, 25), (30, 50, 110), (90, 95, 100),
                   (40, 70, 50), (200, 170, 60)]
CLOTH_COLOURS = [(30, 30, 35), (60, 70, 110), (150, 30, 40), (200, 200, 195), (90, 80, 60), (40, 90, 60),
                 (180, 140, 60), (120, 120, 125)]
SKIN_COLOURS = [(230, 190, 160), (200, 150, 110), (150, 100, 70), (100, 70, 50)]


@dataclass(frozen=True)
class Shape:
    """One polygon of the scene, in image coordinates (float, before clipping)."""

    label: str  # the annotation's label name, as in *_polygons.json (may be a "...group")
    polygon: np.ndarray  # (k, 2) x, y
    colour: tuple[float, float, float]  # base RGB of its pixels in the photo
    texture: str  # key of render.TEXTURES
    annotated: bool = True  # details (windows, lamps, wheels) colour the photo but are not annotated objects


@dataclass(frozen=True)
class Lighting:
    gain: float  # overall brightness factor
    tint: tuple[float, float, float]  # per-channel factor (colour temperature)
    shadow_strength: float  # brightness factor inside cast shadows
    shadows: tuple[np.ndarray, ...]  # polygons darkened by shadow_strength
    noise_sigma: float  # sensor noise, grey levels
    blur: bool  # 3x3 Gaussian optics blur


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    horizon: float  # image row of the horizon
    shapes: tuple[Shape, ...]  # in paint order: later shapes cover earlier ones
    lighting: Lighting


@dataclass(frozen=True)
class Camera:
    focal: float
    centre_x: float
    horizon: float

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points (N, 3) in metres -> image points (N, 2)."""
        x, y, z = points[:, 0], points[:, 1], np.maximum(points[:, 2], Z_NEAR)
        return np.stack([self.centre_x + self.focal * x / z, self.horizon + self.focal * (CAMERA_HEIGHT - y) / z], 1)


@dataclass
class _Object:
    depth: float  # nearest z; objects are painted far to near
    shapes: list[Shape] = field(default_factory=list)


@dataclass(frozen=True)
class _Street:
    """The lateral layout in metres: everything runs parallel to z."""

    road_left: float  # the road spans x in [-road_left, road_right]
    road_right: float
    parking: tuple[bool, bool]  # a parking lane beside the road on the left / right
    sidewalk: tuple[float, float]
    terrain: tuple[float, float]  # grass strip between sidewalk and buildings (0 = none)
    rail_x: float | None  # centre of a tram track in the road, if any
    end: float  # z of the street's far end

    def curb(self, side: int) -> float:
        """|x| of the curb on ``side`` (-1 left, +1 right)."""
        road = self.road_left if side < 0 else self.road_right
        return road + (2.4 if self.parking[side > 0] else 0.0)

    def building_line(self, side: int) -> float:
        i = int(side > 0)
        return self.curb(side) + self.sidewalk[i] + self.terrain[i]


def _box(x: float, z: float, w: float, y0: float, y1: float, length: float) -> np.ndarray:
    """The 8 corners (8, 3) of an axis-aligned box centred at x, from z to z + length."""
    return np.array([(x + dx, y, zz) for dx in (-w / 2, w / 2) for y in (y0, y1) for zz in (z, z + length)])


def _hull(points2d: np.ndarray) -> np.ndarray:
    return cv2.convexHull(points2d.astype(np.float32)).reshape(-1, 2).astype(np.float64)


def _quad_x(x: float, y0: float, y1: float, z0: float, z1: float) -> np.ndarray:
    """A vertical wall at lateral position x from z0 to z1 (e.g. a facade), as 4 world points."""
    return np.array([(x, y0, z0), (x, y0, z1), (x, y1, z1), (x, y1, z0)])


def _frontal(x0: float, x1: float, y0: float, y1: float, z: float) -> np.ndarray:
    """A rectangle facing the camera at depth z, as 4 world points."""
    return np.array([(x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)])


def _ground(x0: float, x1: float, z0: float, z1: float) -> np.ndarray:
    return np.array([(x0, 0.0, z0), (x1, 0.0, z0), (x1, 0.0, z1), (x0, 0.0, z1)])


def _jitter(rng: np.random.Generator, colour: tuple[float, ...], amount: float) -> tuple[float, float, float]:
    rgb = np.clip(np.asarray(colour, float) * rng.uniform(1 - amount, 1 + amount) + rng.normal(0, 6, 3), 0, 255)
    return tuple(float(c) for c in rgb)


class _Builder:
    """Builds one scene; each method adds one kind of thing."""

    def __init__(self, rng: np.random.Generator, width: int, height: int):
        self.rng, self.width, self.height = rng, width, height
        horizon = height * rng.uniform(0.40, 0.48)
        self.camera = Camera(focal=width * rng.uniform(1.0, 1.2), centre_x=width * rng.uniform(0.45, 0.55),
                             horizon=horizon)
        self.street = _Street(
            road_left=rng.uniform(3.5, 10.0), road_right=rng.uniform(1.8, 4.5),
            parking=(bool(rng.random() < 0.3), bool(rng.random() < 0.3)),
            sidewalk=(rng.uniform(2.0, 5.0), rng.uniform(2.0, 5.0)),
            terrain=(rng.uniform(1.0, 4.0) if rng.random() < 0.4 else 0.0,
                     rng.uniform(1.0, 4.0) if rng.random() < 0.4 else 0.0),
            rail_x=None, end=rng.uniform(60.0, 250.0))
        if rng.random() < 0.2:
            self.street = replace(self.street, rail_x=-self.street.road_left * rng.uniform(0.3, 0.6))
        self.background: list[Shape] = []  # painted first, in this order
        self.facades: list[_Object] = []
        self.foreground: list[_Object] = []
        self.occupied: list[tuple[float, float, float, float]] = []  # (x0, x1, z0, z1) footprints on the ground
        self.shadows: list[np.ndarray] = []

    # -- helpers ------------------------------------------------------------------------------------------------
    def shape(self, label: str, world: np.ndarray, colour, texture: str, annotated: bool = True,
              hull: bool = False) -> Shape:
        points = self.camera.project(world)
        return Shape(label, _hull(points) if hull else points, tuple(colour), texture, annotated)

    def pick(self, options: list):
        return options[int(self.rng.integers(len(options)))]

    def free(self, x0: float, x1: float, z0: float, z1: float) -> bool:
        """Claim a ground footprint if it overlaps nothing placed so far."""
        for a0, a1, b0, b1 in self.occupied:
            if x0 < a1 and a0 < x1 and z0 < b1 + 1.0 and b0 < z1 + 1.0:
                return False
        self.occupied.append((x0, x1, z0, z1))
        return True

    # -- layers -------------------------------------------------------------------------------------------------
    def sky_and_ground(self) -> None:
        rng, st, w, h = self.rng, self.street, self.width, self.height
        overcast = rng.random() < 0.4
        sky = (200, 205, 210) if overcast else (120, 165, 220)
        self.background.append(Shape("sky", np.array([(0, 0), (w, 0), (w, h), (0, h)], float),
                                     _jitter(rng, sky, 0.1), "sky"))
        road = _jitter(rng, (95, 95, 100), 0.15)
        walk = _jitter(rng, (150, 140, 138), 0.12)
        z0, z1 = Z_NEAR, st.end
        for side in (-1, 1):
            i = int(side > 0)
            curb, line = st.curb(side), st.building_line(side)
            outer = "terrain" if st.terrain[i] > 0 or rng.random() < 0.3 else "sidewalk"
            strips = [(line, line + 40.0, outer, (110, 140, 70) if outer == "terrain" else walk,
                       "grass" if outer == "terrain" else "paving")]
            if st.terrain[i] > 0:
                strips.append((curb + st.sidewalk[i], line, "terrain", _jitter(rng, (110, 140, 70), 0.15), "grass"))
            strips.append((curb, curb + st.sidewalk[i], "sidewalk", walk, "paving"))
            if st.parking[i]:
                road_edge = st.road_left if side < 0 else st.road_right
                strips.append((road_edge, curb, "parking", _jitter(rng, (120, 108, 112), 0.12), "paving"))
            for a, b, label, colour, texture in strips:
                x0, x1 = sorted((side * a, side * b))
                self.background.append(self.shape(label, _ground(x0, x1, z0, z1), colour, texture))
        self.background.append(self.shape("road", _ground(-st.road_left, st.road_right, z0, z1), road, "asphalt"))
        self.lane_markings()
        if st.rail_x is not None:
            self.background.append(self.shape("rail track", _ground(st.rail_x - 0.85, st.rail_x + 0.85, z0, z1),
                                              _jitter(rng, (105, 95, 85), 0.1), "gravel"))
        if rng.random() < 0.25:  # a patch of bare ground on one side
            side = self.pick([-1, 1])
            a = st.curb(side) + rng.uniform(0.2, 1.0)
            z = rng.uniform(6, 30)
            x0, x1 = sorted((side * a, side * (a + rng.uniform(1.0, 2.5))))
            self.background.append(self.shape("ground", _ground(x0, x1, z, z + rng.uniform(2, 8)),
                                              _jitter(rng, (120, 105, 85), 0.15), "gravel"))

    def lane_markings(self) -> None:
        rng, st = self.rng, self.street
        paint = (215, 215, 210)
        centre = -rng.uniform(0.3, 0.7) * st.road_left
        z = rng.uniform(Z_NEAR + 2, 8)
        while z < min(st.end, 80):
            self.background.append(self.shape("road", _ground(centre - 0.07, centre + 0.07, z, z + 3.0), paint,
                                              "flat", annotated=False))
            z += 9.0
        for x in (-st.road_left + 0.3, st.road_right - 0.3):
            if rng.random() < 0.6:
                self.background.append(self.shape("road", _ground(x - 0.06, x + 0.06, Z_NEAR + 1, st.end * 0.8),
                                                  paint, "flat", annotated=False))
        if rng.random() < 0.2:  # a zebra crossing
            z = rng.uniform(8, 25)
            for x in np.arange(-st.road_left + 0.5, st.road_right - 0.5, 1.0):
                self.background.append(self.shape("road", _ground(x, x + 0.5, z, z + 3.0), paint, "flat",
                                                  annotated=False))

    def backdrop(self) -> None:
        """The far end of the street: a row of buildings or trees across it, hiding the horizon."""
        rng, z = self.rng, self.street.end
        x = -90.0
        while x < 90.0:
            width = rng.uniform(8, 30)
            if rng.random() < 0.7:
                colour = _jitter(rng, self.pick(FACADE_COLOURS), 0.15)
                world = _frontal(x, x + width, 0.0, rng.uniform(4, 22), z)
                self.background.append(self.shape("building", world, colour, "facade"))
            else:
                self.background.append(self.crown("vegetation", x + width / 2, 0.0, z, width / 2,
                                                  rng.uniform(4, 12)))
            x += width
        if rng.random() < 0.03:
            self.background.append(self.shape("tunnel", _frontal(-12, 12, 0.0, 7.5, z - 0.5),
                                              _jitter(rng, (60, 55, 50), 0.1), "dark"))

    def buildings(self) -> None:
        rng, st = self.rng, self.street
        sunny_side = self.pick([-1, 1]) if rng.random() < 0.6 else 0
        gap_rate, tallest = rng.uniform(0.1, 0.5), rng.uniform(8, 26)  # suburb ... city centre
        for side in (-1, 1):
            x = side * st.building_line(side)
            z = rng.uniform(0.5, 4.0)
            while z < st.end:
                length = rng.uniform(6, 30)
                if rng.random() < gap_rate:  # a gap: a hedge or nothing (the sky and the ground behind show)
                    if rng.random() < 0.5:
                        obj = _Object(z, [self.shape("vegetation", _quad_x(x, 0, rng.uniform(1, 2), z, z + length),
                                                     _jitter(rng, (60, 95, 45), 0.15), "foliage")])
                        self.facades.append(obj)
                    z += length
                    continue
                height = rng.uniform(4, tallest)
                colour = _jitter(rng, self.pick(FACADE_COLOURS), 0.12)
                obj = _Object(z, [self.shape("building", _quad_x(x, 0, height, z, z + length), colour, "facade")])
                self.windows(obj, x, z, z + length, height)
                self.facades.append(obj)
                if side == sunny_side:
                    reach = height * rng.uniform(0.3, 1.0)
                    self.shadows.append(self.camera.project(_ground(min(x, x - side * reach), max(x, x - side * reach),
                                                                    z, z + length)))
                z += length

    def windows(self, obj: _Object, x: float, z0: float, z1: float, height: float) -> None:
        rng = self.rng
        if self.camera.focal * 1.2 / max(z0, Z_NEAR) < 3:  # too far for visible windows
            return
        glass = _jitter(rng, (55, 65, 80), 0.3)
        inset = -0.05 * np.sign(x)  # just in front of the facade plane
        for floor in np.arange(1.0 + rng.uniform(0, 1), height - 1.6, 3.0):
            for z in np.arange(z0 + 1.0, z1 - 1.5, rng.uniform(2.5, 3.5)):
                lit = rng.random() < 0.1
                colour = (230, 210, 150) if lit else glass
                obj.shapes.append(self.shape("building", _quad_x(x + inset, floor, floor + 1.5, z, z + 1.2),
                                             colour, "glass", annotated=False))

    def crown(self, label: str, x: float, y: float, z: float, radius_x: float, radius_y: float) -> Shape:
        """A leafy blob (tree crown, bush) facing the camera, centred at (x, y + radius_y, z)."""
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        r = self.rng.uniform(0.75, 1.15, angles.size)
        world = np.stack([x + radius_x * r * np.cos(angles), y + radius_y + radius_y * r * np.sin(angles),
                          np.full_like(angles, z)], 1)
        return self.shape(label, world, _jitter(self.rng, (60, 100, 40), 0.2), "foliage")

    def trees_walls_fences(self) -> None:
        rng, st = self.rng, self.street
        for side in (-1, 1):
            i = int(side > 0)
            x = side * (st.curb(side) + st.sidewalk[i] * rng.uniform(0.6, 0.9))
            if rng.random() < 0.55:
                z = rng.uniform(4, 15)
                while z < min(st.end, 120):
                    trunk_h, radius = rng.uniform(2, 3.5), rng.uniform(1.5, 3.0)
                    obj = _Object(z, [
                        self.shape("vegetation", _frontal(x - 0.18, x + 0.18, 0, trunk_h + radius * 0.5, z),
                                   _jitter(rng, (80, 65, 50), 0.15), "bark"),
                        self.crown("vegetation", x, trunk_h - radius * 0.4, z, radius, radius * 1.1)])
                    self.foreground.append(obj)
                    z += rng.uniform(7, 16)
            line = st.building_line(side) - 0.3
            for label, colour, texture, height in (("wall", (150, 145, 135), "facade", (0.8, 2.5)),
                                                   ("fence", (120, 110, 90), "fence", (1.0, 2.0)),
                                                   ("guard rail", (170, 170, 175), "metal", (0.7, 0.9))):
                if rng.random() < (0.1 if label == "guard rail" else 0.3):
                    z0 = rng.uniform(3, 30)
                    lx = side * (st.curb(side) - 0.2) if label == "guard rail" else side * line
                    world = _quad_x(lx, 0, rng.uniform(*height), z0, z0 + rng.uniform(5, 30))
                    self.foreground.append(_Object(z0, [self.shape(label, world, _jitter(rng, colour, 0.15),
                                                                   texture)]))

    def poles_signs_lights(self) -> None:
        rng, st = self.rng, self.street
        for side in (-1, 1):
            if rng.random() > 0.85:
                continue
            x = side * (st.curb(side) + 0.3)
            z = rng.uniform(4, 20)
            while z < min(st.end, 150):
                self.pole(x, z, side)
                z += rng.uniform(12, 35)
        if rng.random() < 0.05:  # a polegroup: several poles annotated as one
            side, z = self.pick([-1, 1]), rng.uniform(8, 30)
            x = side * (st.curb(side) + 0.5)
            world = np.concatenate([_frontal(x + dx - 0.08, x + dx + 0.08, 0, rng.uniform(3, 6), z)
                                    for dx in (-0.4, 0.0, 0.4)])
            self.foreground.append(_Object(z, [self.shape("polegroup", world, (110, 110, 112), "metal",
                                                          hull=True)]))

    def pole(self, x: float, z: float, side: int) -> None:
        rng = self.rng
        height, w = rng.uniform(4, 9), rng.uniform(0.12, 0.22)
        grey = _jitter(rng, (115, 115, 118), 0.2)
        obj = _Object(z, [self.shape("pole", _frontal(x - w / 2, x + w / 2, 0, height, z), grey, "metal")])
        roll = rng.random()
        if roll < 0.45:
            self.sign(obj, x - side * 0.3, rng.uniform(2.0, 3.0), z - 0.05)
        elif roll < 0.75:
            self.traffic_light(obj, x, height - 1.0, z - 0.05)
        elif roll < 0.9:  # an arm over the road with a light hanging from it
            reach = rng.uniform(1.5, 3.5)
            x0, x1 = sorted((x, x - side * reach))
            obj.shapes.append(self.shape("pole", _frontal(x0, x1, height - 0.2, height, z), grey, "metal"))
            self.traffic_light(obj, x - side * reach, height - 1.2, z - 0.05)
        self.foreground.append(obj)

    def sign(self, obj: _Object, x: float, y: float, z: float) -> None:
        rng = self.rng
        r = rng.uniform(0.3, 0.45)
        kind = self.pick(["disc", "triangle", "rect", "back"])
        if kind == "disc":
            angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
            outline = np.stack([x + r * np.cos(angles), y + r * np.sin(angles), np.full(16, z)], 1)
            inner = np.stack([x + 0.7 * r * np.cos(angles), y + 0.7 * r * np.sin(angles), np.full(16, z - 0.01)], 1)
            face, rim = (235, 235, 230), (190, 30, 35)
        elif kind == "triangle":
            outline = np.array([(x - r, y - r * 0.8, z), (x + r, y - r * 0.8, z), (x, y + r, z)])
            inner = np.array([(x - 0.6 * r, y - 0.55 * r, z - 0.01), (x + 0.6 * r, y - 0.55 * r, z - 0.01),
                              (x, y + 0.55 * r, z - 0.01)])
            face, rim = (235, 235, 230), (190, 30, 35)
        else:
            outline = _frontal(x - r, x + r, y - r, y + r, z)
            inner = _frontal(x - 0.7 * r, x + 0.7 * r, y - 0.7 * r, y + 0.7 * r, z - 0.01)
            face, rim = ((30, 80, 170), (230, 230, 230)) if kind == "rect" else ((140, 140, 140), (120, 120, 120))
        obj.shapes.append(self.shape("traffic sign", outline, _jitter(rng, rim, 0.1), "flat"))
        obj.shapes.append(self.shape("traffic sign", inner, _jitter(rng, face, 0.1), "flat", annotated=False))

    def traffic_light(self, obj: _Object, x: float, y: float, z: float) -> None:
        rng = self.rng
        obj.shapes.append(self.shape("traffic light", _frontal(x - 0.17, x + 0.17, y, y + 0.9, z),
                                     _jitter(rng, (35, 35, 30), 0.2), "dark"))
        lit = int(rng.integers(3))
        for k, colour in enumerate(((60, 220, 90), (250, 180, 40), (240, 50, 40))):
            cy = y + 0.15 + 0.3 * k
            lamp = colour if k == lit else (50, 50, 45)
            obj.shapes.append(self.shape("traffic light", _frontal(x - 0.09, x + 0.09, cy - 0.09, cy + 0.09, z - 0.01),
                                         lamp, "light", annotated=False))

    def vehicles(self) -> None:
        rng, st = self.rng, self.street
        lanes = [0.0] + [-3.3 * k for k in range(1, int(st.road_left // 3.3) + 1)]
        weights = np.array(list(VEHICLE_WEIGHTS.values())) / sum(VEHICLE_WEIGHTS.values())
        if st.rail_x is not None and rng.random() < 0.75:  # a tram first: it needs the longest free stretch
            self.vehicle("train", st.rail_x, rng.uniform(12, 60))
        for _ in range(int(rng.poisson(3.5))):
            label = str(rng.choice(list(VEHICLE_WEIGHTS), p=weights))
            self.vehicle(label, self.pick(lanes) + rng.uniform(-0.4, 0.4), rng.uniform(6, 80))
        for side in (-1, 1):  # parked cars along the curb or in the parking lane
            if not st.parking[int(side > 0)] and rng.random() < 0.5:
                continue
            x = side * (st.curb(side) - 1.2)
            for _ in range(int(rng.poisson(2.5))):
                self.vehicle("car", x, rng.uniform(4, 60))

    def vehicle(self, label: str, x: float, z: float) -> None:
        rng = self.rng
        w, h, length = (s * rng.uniform(0.9, 1.1) for s in VEHICLE_SIZES[label])
        if not self.free(x - w / 2, x + w / 2, z, z + length):
            return
        colour = _jitter(rng, self.pick(VEHICLE_COLOURS), 0.1)
        obj = _Object(z)
        corners = _box(x, z, w, 0, h * (0.65 if label == "car" else 1.0), length)
        if label == "car":  # body plus a narrower cabin
            corners = np.concatenate([corners, _box(x, z + 0.3 * length, 0.85 * w, 0.6 * h, h, 0.45 * length)])
        obj.shapes.append(self.shape(label, corners, colour, "metal", hull=True))
        if label in ("car", "truck", "bus", "caravan", "train"):
            self.vehicle_details(obj, label, x, z, w, h, length)
        if label in ("motorcycle", "bicycle") and rng.random() < 0.9:
            self.person(x, z + length / 2, rider=True)
        self.foreground.append(obj)

    def vehicle_details(self, obj: _Object, label: str, x: float, z: float, w: float, h: float, length: float) -> None:
        rng = self.rng
        if label == "car":
            glass = _box(x, z + 0.33 * length, 0.8 * w, 0.68 * h, 0.95 * h, 0.4 * length)
        else:
            glass = _box(x, z + 0.05, 0.98 * w, 0.55 * h, 0.8 * h, length - 0.1)
        obj.shapes.append(self.shape(label, glass, _jitter(rng, (40, 50, 60), 0.3), "glass", annotated=False,
                                     hull=True))
        tyres = _box(x, z + 0.05, 0.98 * w, 0.0, 0.3, length - 0.1)
        obj.shapes.append(self.shape(label, tyres, (25, 25, 25), "dark", annotated=False, hull=True))
        lamp = (200, 30, 30) if x > -1.5 else (230, 230, 210)  # tail lights ahead, headlights oncoming
        for dx in (-w / 2 + 0.15, w / 2 - 0.45):
            lamp_box = _frontal(x + dx, x + dx + 0.3, 0.55 * h, 0.62 * h + 0.05, z - 0.02)
            obj.shapes.append(self.shape(label, lamp_box, lamp, "light", annotated=False))

    def people(self) -> None:
        rng, st = self.rng, self.street
        for _ in range(int(rng.poisson(3.0))):
            side = self.pick([-1, 1])
            i = int(side > 0)
            x = side * (st.curb(side) + rng.uniform(0.3, max(0.4, st.sidewalk[i] - 0.3)))
            self.person(x, rng.uniform(4, 45))
        if rng.random() < 0.15:  # someone crossing the road
            self.person(rng.uniform(-st.road_left + 0.5, st.road_right - 0.5), rng.uniform(5, 25))
        if rng.random() < 0.1:  # a crowd too dense for instances: one "persongroup" polygon
            side = self.pick([-1, 1])
            x, z = side * (st.curb(side) + 1.2), rng.uniform(8, 30)
            world = np.concatenate([np.c_[PERSON_OUTLINE + [x + dx, 0], np.full(len(PERSON_OUTLINE), z)]
                                    for dx in (-0.45, 0.0, 0.45)])
            self.foreground.append(_Object(z, [self.shape("persongroup", world, self.pick(CLOTH_COLOURS), "cloth",
                                                          hull=True)]))

    def person(self, x: float, z: float, rider: bool = False) -> None:
        rng = self.rng
        if rider:
            scale, lift, outline, label = rng.uniform(0.9, 1.05), rng.uniform(0.85, 1.0), RIDER_OUTLINE, "rider"
        else:
            child = rng.random() < 0.1
            scale = rng.uniform(0.6, 0.8) if child else rng.uniform(0.88, 1.1)
            lift, outline, label = 0.0, PERSON_OUTLINE, "person"
            if not self.free(x - 0.3, x + 0.3, z - 0.2, z + 0.2):
                return
        def world(points: np.ndarray, dz: float = 0.0) -> np.ndarray:
            p = points * scale
            return np.c_[x + p[:, 0] * rng.uniform(0.95, 1.05), lift + p[:, 1], np.full(len(p), z - dz)]
        top = self.pick(CLOTH_COLOURS)
        obj = _Object(z - (0.3 if rider else 0.0), [self.shape(label, world(outline), _jitter(rng, top, 0.15), "cloth")])
        if not rider:
            obj.shapes.append(self.shape(label, world(PERSON_LEGS, 0.01), _jitter(rng, self.pick(CLOTH_COLOURS), 0.15),
                                         "cloth", annotated=False))
            obj.shapes.append(self.shape(label, world(PERSON_HEAD, 0.01), self.pick(SKIN_COLOURS), "flat",
                                         annotated=False))
        self.foreground.append(obj)

    def street_furniture(self) -> None:
        """Static objects (bins, benches, boxes), a rare dynamic one (a pram, a cart) and a rare bridge."""
        rng, st = self.rng, self.street
        for _ in range(int(rng.poisson(1.2))):
            side = self.pick([-1, 1])
            x, z = side * (st.curb(side) + rng.uniform(0.4, 1.5)), rng.uniform(4, 35)
            w, h = rng.uniform(0.5, 1.4), rng.uniform(0.7, 1.3)
            if self.free(x - w / 2, x + w / 2, z, z + 0.6):
                colour = _jitter(rng, self.pick([(60, 90, 60), (120, 120, 120), (150, 110, 70)]), 0.15)
                self.foreground.append(_Object(z, [self.shape("static", _frontal(x - w / 2, x + w / 2, 0, h, z),
                                                              colour, "metal")]))
        if rng.random() < 0.15:
            side = self.pick([-1, 1])
            x, z = side * (st.curb(side) + 0.6), rng.uniform(5, 25)
            if self.free(x - 0.4, x + 0.4, z, z + 0.8):
                self.foreground.append(_Object(z, [self.shape("dynamic", _frontal(x - 0.35, x + 0.35, 0, 1.0, z),
                                                              _jitter(rng, (90, 70, 60), 0.2), "cloth")]))
        if rng.random() < 0.06:
            z = rng.uniform(25, min(80, st.end - 5))
            self.foreground.append(_Object(z, [self.shape("bridge", _frontal(-80, 80, 5.0, rng.uniform(6.5, 8.0), z),
                                                          _jitter(rng, (130, 125, 115), 0.1), "facade")]))

    def borders(self, annotated: bool) -> list[Shape]:
        """The recording's void borders: the ego vehicle's hood, out-of-roi strips and the rectification border."""
        rng, w, h = self.rng, self.width, self.height
        xs = np.linspace(-0.02 * w, 1.02 * w, 25)
        hood_h = h * rng.uniform(0.07, 0.12)
        top = h - hood_h * (1 - 0.4 * ((xs - w / 2) / (w / 2)) ** 2)
        hood = np.concatenate([np.c_[xs, top], [(1.02 * w, h + 5), (-0.02 * w, h + 5)]])
        s = w / 2048
        roi_h = h * rng.uniform(0.004, 0.012)
        corner_w, corner_h = w * rng.uniform(0.02, 0.06), h * rng.uniform(0.03, 0.07)
        left_top, left_bottom = rng.uniform(0, 6) * s, rng.uniform(4, 16) * s
        right_top, right_bottom = rng.uniform(0, 6) * s, rng.uniform(4, 16) * s
        dark = (12, 12, 12)
        return [
            Shape("ego vehicle", hood, _jitter(rng, (45, 45, 50), 0.3), "hood", annotated),
            Shape("out of roi", np.array([(0, h - roi_h), (w, h - roi_h), (w, h), (0, h)]), dark, "dark", annotated),
            Shape("out of roi", np.array([(0, h - corner_h), (corner_w, h), (0, h)]), dark, "dark", annotated),
            Shape("out of roi", np.array([(w, h - corner_h), (w, h), (w - corner_w, h)]), dark, "dark", annotated),
            Shape("rectification border", np.array([(0, 0), (left_top, 0), (left_bottom, h), (0, h)]), dark, "dark",
                  annotated),
            Shape("rectification border", np.array([(w, 0), (w - right_top, 0), (w - right_bottom, h), (w, h)]), dark,
                  "dark", annotated),
        ]

    def lighting(self) -> Lighting:
        rng = self.rng
        t = rng.uniform(-0.07, 0.07)
        return Lighting(gain=rng.uniform(0.6, 1.25), tint=(1 + t, 1.0, 1 - t), shadow_strength=rng.uniform(0.45, 0.8),
                        shadows=tuple(self.shadows), noise_sigma=rng.uniform(1.5, 6.0), blur=bool(rng.random() < 0.5))


def generate_scene(rng: np.random.Generator, width: int, height: int, annotate_all: bool = True) -> Scene:
    """Draw one street scene.

    ``annotate_all=False`` keeps only the void borders annotated, as in the official test split, whose ground
    truth carries no evaluable labels. The photo is the same either way.
    """
    builder = _Builder(rng, width, height)
    builder.sky_and_ground()
    builder.backdrop()
    builder.buildings()
    builder.trees_walls_fences()
    builder.poles_signs_lights()
    builder.vehicles()
    builder.people()
    builder.street_furniture()
    objects = sorted(builder.facades, key=lambda o: -o.depth) + sorted(builder.foreground, key=lambda o: -o.depth)
    shapes = builder.background + [shape for obj in objects for shape in obj.shapes]
    if not annotate_all:
        shapes = [Shape(s.label, s.polygon, s.colour, s.texture, annotated=False) for s in shapes]
    shapes += builder.borders(annotated=True)
    return Scene(width, height, builder.camera.horizon, tuple(shapes), builder.lighting())
