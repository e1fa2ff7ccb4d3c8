"""Turning a scene into the official annotation files and a photo.

Label and instance images are rasterised from exactly the polygons written to ``*_polygons.json``, with Pillow's
polygon fill in file order, the way cityscapesscripts' ``json2labelImg`` and ``json2instanceImg`` do; so the
official tools recreate our label images bit for bit. The photo is painted from the same scene plus unannotated
details (windows, lamps, wheels, lane markings), textures, light, shadows and sensor noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw

from ...labels import LABELID_PALETTE, resolve_annotation_label
from .scene import Scene

# Per texture: amplitudes of coarse, medium and fine value noise (relative brightness), of a vertical stripe
# pattern, and a vertical brightness gradient (per image height). Similar classes get similar textures on
# purpose (road / sidewalk / parking, vegetation / terrain), so that the task is not trivial.
TEXTURES: dict[str, tuple[float, float, float, float, float]] = {
    "flat": (0.03, 0.02, 0.02, 0.0, 0.0),
    "asphalt": (0.07, 0.05, 0.07, 0.0, 0.0),
    "paving": (0.06, 0.05, 0.09, 0.0, 0.0),
    "gravel": (0.06, 0.08, 0.14, 0.0, 0.0),
    "facade": (0.07, 0.05, 0.05, 0.0, 0.0),
    "foliage": (0.10, 0.16, 0.24, 0.0, 0.0),
    "grass": (0.09, 0.10, 0.15, 0.0, 0.0),
    "bark": (0.05, 0.05, 0.10, 0.0, 0.0),
    "sky": (0.08, 0.02, 0.0, 0.0, -0.6),
    "metal": (0.02, 0.03, 0.03, 0.0, 0.2),
    "glass": (0.06, 0.08, 0.03, 0.0, 0.0),
    "cloth": (0.03, 0.06, 0.06, 0.0, 0.0),
    "fence": (0.04, 0.04, 0.05, 0.35, 0.0),
    "dark": (0.03, 0.02, 0.03, 0.0, 0.0),
    "hood": (0.02, 0.02, 0.01, 0.0, 1.2),
    "light": (0.0, 0.0, 0.0, 0.0, 0.0),
}
_TEXTURE_KEYS = list(TEXTURES)
_TEXTURE_TABLE = np.array([TEXTURES[key] for key in _TEXTURE_KEYS], dtype=np.float32)


@dataclass(frozen=True)
class Rendered:
    photo: np.ndarray  # (H, W, 3) uint8 RGB
    label_ids: np.ndarray  # (H, W) uint8 Cityscapes labelIds
    instance_ids: np.ndarray  # (H, W) uint16: labelId*1000 + k for instances, else labelId
    polygons: dict  # the *_polygons.json content


def clip_polygon(polygon: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip a polygon (k, 2) to the image rectangle [0, width-1] x [0, height-1] (Sutherland-Hodgman) and round it
    to integer pixel coordinates, dropping repeated points. May return fewer than 3 points."""
    points = [tuple(p) for p in polygon]
    for axis, bound, keep_below in ((0, 0.0, False), (0, width - 1.0, True), (1, 0.0, False),
                                    (1, height - 1.0, True)):
        if not points:
            break
        inside = (lambda p: p[axis] <= bound) if keep_below else (lambda p: p[axis] >= bound)
        clipped = []
        for i, current in enumerate(points):
            previous = points[i - 1]
            if inside(current) != inside(previous):
                t = (bound - previous[axis]) / (current[axis] - previous[axis])
                clipped.append(tuple(previous[k] + t * (current[k] - previous[k]) for k in (0, 1)))
            if inside(current):
                clipped.append(current)
        points = clipped
    rounded = np.rint(np.array(points, dtype=np.float64).reshape(-1, 2)).astype(np.int64)
    if len(rounded) == 0:
        return rounded
    keep = np.any(rounded != np.roll(rounded, 1, axis=0), axis=1)
    return rounded[keep] if keep.any() else rounded[:1]


def rasterize(polygons: list[np.ndarray], values: list[int], width: int, height: int, background: int = 0
              ) -> np.ndarray:
    """Fill integer polygons in order (later ones on top) with Pillow, as the official tools do; (H, W) int32."""
    canvas = Image.new("I", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    for polygon, value in zip(polygons, values):
        draw.polygon([(int(x), int(y)) for x, y in polygon], fill=int(value))
    return np.asarray(canvas, dtype=np.int32)


def annotation_json(shapes: list[tuple[str, np.ndarray]], width: int, height: int) -> dict:
    """The ``*_polygons.json`` content for annotated (label, integer polygon) pairs, in drawing order."""
    return {"imgHeight": height, "imgWidth": width,
            "objects": [{"label": label, "polygon": polygon.tolist()} for label, polygon in shapes]}


def label_images(annotated: list[tuple[str, np.ndarray]], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """labelIds (uint8) and instanceIds (uint16) images of annotated polygons, following the official rules:
    instance classes get ``labelId*1000 + k`` (k counting per class in file order), groups and other classes
    their labelId, uncovered pixels 0."""
    label_values, instance_values, counts = [], [], {}
    for name, _ in annotated:
        label, is_group = resolve_annotation_label(name)
        label_values.append(label.id)
        if label.hasInstances and not is_group:
            instance_values.append(label.id * 1000 + counts.get(label.id, 0))
            counts[label.id] = counts.get(label.id, 0) + 1
        else:
            instance_values.append(label.id)
    order = np.arange(1, len(annotated) + 1)
    index = rasterize([polygon for _, polygon in annotated], list(order), width, height)
    label_lut = np.array([0] + label_values, dtype=np.uint8)
    instance_lut = np.array([0] + instance_values, dtype=np.uint16)
    return label_lut[index], instance_lut[index]


def colour_image(label_ids: np.ndarray) -> np.ndarray:
    """The official ``*_gtFine_color.png`` content: RGBA in the official palette."""
    rgb = LABELID_PALETTE[label_ids]
    return np.dstack([rgb, np.full(label_ids.shape, 255, np.uint8)])


def _value_noise(rng: np.random.Generator, width: int, height: int, cell: int) -> np.ndarray:
    """Smooth noise with features of about ``cell`` pixels, unit standard deviation, (H, W) float32."""
    small = rng.standard_normal((max(2, height // cell + 2), max(2, width // cell + 2)), dtype=np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC) / 0.8


def paint_photo(scene: Scene, shapes: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The RGB photo (H, W, 3) uint8 of a scene whose shapes were clipped to integer polygons ``shapes``."""
    w, h, light = scene.width, scene.height, scene.lighting
    index = rasterize(shapes, list(range(1, len(shapes) + 1)), w, h)
    colours = np.array([(0, 0, 0)] + [s.colour for s in scene.shapes], dtype=np.float32)
    textures = np.array([0] + [_TEXTURE_KEYS.index(s.texture) for s in scene.shapes], dtype=np.int64)
    params = _TEXTURE_TABLE[textures][index]  # (H, W, 5)
    scale = w / 2048
    noise = [_value_noise(rng, w, h, max(2, int(c * scale))) for c in (160, 40, 6)]
    rows = (np.arange(h, dtype=np.float32)[:, None] - scene.horizon) / h
    stripes = (np.sin(np.arange(w, dtype=np.float32) * (2 * np.pi / max(3.0, 14 * scale))) > 0).astype(np.float32)
    shade = (1 + params[..., 0] * noise[0] + params[..., 1] * noise[1] + params[..., 2] * noise[2]
             - params[..., 3] * stripes[None, :] + params[..., 4] * rows)
    photo = colours[index] * shade[..., None]
    if light.shadows:
        mask = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask)
        for polygon in light.shadows:
            clipped = clip_polygon(polygon, w, h)
            if len(clipped) >= 3:
                draw.polygon([tuple(map(int, p)) for p in clipped], fill=255)
        shadow = cv2.GaussianBlur(np.asarray(mask, np.float32) / 255, (0, 0), 3 * scale + 0.5)
        photo *= (1 - (1 - light.shadow_strength) * shadow)[..., None]
    photo *= light.gain * np.asarray(light.tint, np.float32)
    if light.blur:
        photo = cv2.GaussianBlur(photo, (3, 3), 0)
    photo += rng.standard_normal(photo.shape, dtype=np.float32) * light.noise_sigma
    return np.clip(photo + 0.5, 0, 255).astype(np.uint8)


def render(scene: Scene, rng: np.random.Generator) -> Rendered:
    """Label images, instance images, polygons and photo of a scene; ``rng`` draws the photo's noise."""
    w, h = scene.width, scene.height
    clipped = [clip_polygon(shape.polygon, w, h) for shape in scene.shapes]
    visible = [(shape, polygon) for shape, polygon in zip(scene.shapes, clipped) if len(polygon) >= 3]
    annotated = [(shape.label, polygon) for shape, polygon in visible if shape.annotated]
    label_ids, instance_ids = label_images(annotated, w, h)
    kept = Scene(w, h, scene.horizon, tuple(shape for shape, _ in visible), scene.lighting)
    photo = paint_photo(kept, [polygon for _, polygon in visible], rng)
    return Rendered(photo, label_ids, instance_ids, annotation_json(annotated, w, h))
