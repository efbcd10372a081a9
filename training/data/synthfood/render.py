"""SynthFood renderer: draws one stylised photo of a recipe with pillow and numpy only.

Everything is drawn in "dish coordinates" (the dish fills the unit disc, y points down) and mapped
to pixels by one per-render frame (rotation, scale, offset, camera tilt). Each ingredient is drawn
as many small pieces onto its own layer (colour + mask), textured there with a cached pattern and
pasted with a drop shadow. See `malm_edge.training.data.synthfood.generate` for the whole design.
"""

from __future__ import annotations

import colorsys
import io
import math
import random
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from malm_edge.training.data.synthfood.recipes import AMOUNT_LEVELS, RecipeSpec
from malm_edge.training.data.synthfood.vocab import BASE_BY_NAME, INGREDIENT_BY_NAME, Base, Ingredient

HSV = tuple[float, float, float]
_SHAPE_AREA = {"circle": 3.1, "cube": 3.4, "wedge": 1.5, "halfmoon": 1.6, "crescent": 1.2, "leaf": 1.3,
               "grain": 1.4, "crumb": 2.4, "stick": 1.0, "blob": 2.9, "dot": 2.6, "slice": 2.4, "ring": 1.6,
               "strand": 0.35}
PIECE_SCALE = 1.2
"""All pieces are drawn this much larger than the vocabulary's sizes (counts shrink to keep coverage)."""
_PLATES: tuple[HSV, ...] = ((40, .03, .96), (45, .08, .92), (210, .35, .75), (20, .55, .62), (0, 0, .18),
                            (160, .25, .7), (0, 0, .85))


def _clip01(value: float) -> float:
    return min(1.0, max(0.0, value))


def rgb(hsv: HSV, dh: float = 0.0, ds: float = 0.0, dv: float = 0.0) -> tuple[int, int, int]:
    """8-bit RGB of an HSV colour (hue in degrees) shifted by (dh, ds, dv)."""
    red, green, blue = colorsys.hsv_to_rgb(((hsv[0] + dh) / 360.0) % 1.0, _clip01(hsv[1] + ds), _clip01(hsv[2] + dv))
    return int(red * 255 + 0.5), int(green * 255 + 0.5), int(blue * 255 + 0.5)


def _ngon(n: int, rx: float = 1.0, ry: float = 1.0, start: float = 0.0) -> np.ndarray:
    theta = start + np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(theta) * rx, np.sin(theta) * ry], axis=1)  # (n, 2)


def _arc(radius: float, a0: float, a1: float, n: int) -> np.ndarray:
    theta = np.linspace(a0, a1, n)
    return np.stack([np.cos(theta) * radius, np.sin(theta) * radius], axis=1)  # (n, 2)


def _centred(points: np.ndarray) -> np.ndarray:
    return points - points.mean(axis=0, keepdims=True)


def _unit_shapes() -> dict[str, list[np.ndarray]]:
    """Piece outlines in unit size (half-extent ~1); a few fixed variants per shape, same vertex count."""
    rng = np.random.default_rng(20240529)

    def irregular(n: int, low: float, high: float) -> np.ndarray:
        return _ngon(n) * rng.uniform(low, high, (n, 1))

    leaf_x = np.linspace(-1, 1, 7)
    leaf = np.concatenate([np.stack([leaf_x, 0.42 * (1 - leaf_x**2)], 1),
                           np.stack([leaf_x[::-1][1:-1], -0.42 * (1 - leaf_x[::-1][1:-1] ** 2)], 1)])
    return {
        "circle": [_ngon(12)],
        "cube": [_ngon(4, start=np.pi / 4) * 1.25 + rng.normal(0, 0.06, (4, 2)) for _ in range(3)],
        "wedge": [_centred(np.concatenate([[[0.0, 0.0]], _arc(2.0, -0.45, 0.45, 6)]))],
        "halfmoon": [_centred(_arc(1.0, 0.0, np.pi, 9))],
        "crescent": [_centred(np.concatenate([_arc(1.0, 0.0, 1.2 * np.pi, 8), _arc(0.5, 1.2 * np.pi, 0.0, 8)]))],
        "leaf": [leaf, leaf * [1.0, 1.3]],
        "grain": [_ngon(8, 1.0, 0.45)],
        "crumb": [irregular(6, 0.55, 1.1) for _ in range(4)],
        "stick": [np.array([[-1, -0.22], [1, -0.22], [1, 0.22], [-1, 0.22]], dtype=float)],
        "blob": [irregular(10, 0.8, 1.1) for _ in range(3)],
        "dot": [_ngon(6)],
        "slice": [_ngon(8, 1.0, 0.62, start=np.pi / 8) * 1.08],
    }


_UNIT_SHAPES = _unit_shapes()


@dataclass
class Frame:
    """Maps dish coordinates (unit disc, y down) to pixels: rotate, scale, tilt (squash y), offset."""

    cx: float
    cy: float
    radius: float
    angle: float
    squash: float

    def px(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) dish coordinates -> (..., 2) pixel coordinates."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        x = points[..., 0] * cos - points[..., 1] * sin
        y = points[..., 0] * sin + points[..., 1] * cos
        return np.stack([self.cx + x * self.radius, self.cy + y * self.radius * self.squash], axis=-1)


@dataclass
class Canvas:
    """One render in progress: the image, its frame and the render's random streams."""

    image: Image.Image
    frame: Frame
    rng: random.Random
    nrng: np.random.Generator

    @property
    def size(self) -> int:
        return self.image.size[0]

    def polygon(self, points: np.ndarray, fill: tuple[int, int, int], outline: tuple[int, int, int] | None = None,
                width: int = 1) -> None:
        """Draw a filled polygon given in dish coordinates."""
        ImageDraw.Draw(self.image).polygon(self.frame.px(points).ravel().tolist(), fill=fill, outline=outline,
                                           width=width)


# --- textures -----------------------------------------------------------------------------------------

_PATTERN_CACHE: dict[tuple[str, str, int], Image.Image] = {}


def _pattern(key: str, kind: str, size: int) -> Image.Image:
    """A (2*size, 2*size) pattern, cached per process and seeded by its key so every worker agrees.

    "speckle", "spots", "stripes" are L masks (255 = secondary colour); "noise" is an RGB multiplier.
    """
    cached = _PATTERN_CACHE.get((key, kind, size))
    if cached is not None:
        return cached
    rng = np.random.default_rng(zlib.crc32(f"{key}/{kind}".encode()))
    full = 2 * size
    if kind == "stripes":
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:full, 0:full].astype(np.float32)
        period = max(3.0, size / rng.uniform(22, 40))
        wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
        array = np.where(wave > 0.45, 255, 0).astype(np.uint8)
    elif kind == "speckle":
        cell = max(1, round(size / 128))
        small = (rng.random((full // cell + 1,) * 2) < 0.14).astype(np.uint8) * 255
        array = np.kron(small, np.ones((cell, cell), np.uint8))[:full, :full]
    else:  # spots, noise: smooth low-resolution noise
        cells = max(4, int(full / max(2.0, size / 40)))
        low = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
        smooth = np.asarray(low.resize((full, full), Image.BILINEAR), dtype=np.float32) / 255.0
        if kind == "spots":
            array = np.where(smooth > 0.68, 255, 0).astype(np.uint8)
        else:
            array = (205 + 50 * smooth).astype(np.uint8)
    image = Image.fromarray(array)
    if kind == "noise":
        image = Image.merge("RGB", (image, image, image))
    _PATTERN_CACHE[(key, kind, size)] = image
    return image


def _crop(canvas: Canvas, pattern: Image.Image) -> Image.Image:
    size = canvas.size
    ox, oy = canvas.rng.randrange(size), canvas.rng.randrange(size)
    return pattern.crop((ox, oy, ox + size, oy + size))


def _texture(canvas: Canvas, layer: Image.Image, key: str, kind: str, second: HSV) -> Image.Image:
    """Apply a pattern texture to a colour layer (the layer mask limits it to the pieces)."""
    if kind == "noise":
        return ImageChops.multiply(layer, _crop(canvas, _pattern(key, "noise", canvas.size)))
    if kind in ("speckle", "spots", "stripes"):
        secondary = Image.new("RGB", layer.size, rgb(second))
        return Image.composite(secondary, layer, _crop(canvas, _pattern(key, kind, canvas.size)))
    return layer


def _paste_layer(canvas: Canvas, layer: Image.Image, mask: Image.Image, shadow: float = 0.35) -> None:
    """Paste a layer through its mask, with a soft offset drop shadow below it (only the mask's bbox)."""
    box = mask.getbbox()
    if box is None:
        return
    mask = mask.crop(box)
    if shadow > 0:
        offset = max(1, round(canvas.size / 110))
        lut = [int(v * shadow) for v in range(256)]
        x0, y0, x1, y1 = box
        canvas.image.paste((25, 18, 12), (x0 + offset, y0 + offset, x1 + offset, y1 + offset), mask.point(lut))
    canvas.image.paste(layer.crop(box), box[:2], mask)


# --- pieces -------------------------------------------------------------------------------------------


def _rotate(vertices: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """(n, V, 2) vertices rotated by (n,) angles."""
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    return np.stack([vertices[..., 0] * cos - vertices[..., 1] * sin,
                     vertices[..., 0] * sin + vertices[..., 1] * cos], axis=-1)


def _piece_colours(canvas: Canvas, ingredient: Ingredient, n: int) -> list[tuple[int, int, int]]:
    rng, jitter = canvas.rng, ingredient.hue_jitter
    return [rgb(ingredient.hsv, rng.uniform(-jitter, jitter), rng.uniform(-0.06, 0.06), rng.uniform(-0.07, 0.07))
            for _ in range(n)]


def _darker(colour: tuple[int, int, int], factor: float = 0.62) -> tuple[int, int, int]:
    return int(colour[0] * factor), int(colour[1] * factor), int(colour[2] * factor)


def draw_pieces(canvas: Canvas, ingredient: Ingredient, centres: np.ndarray, *, scale: float = 1.0,
                flatten: float = 1.0, angles: np.ndarray | None = None, shadow: float = 0.35) -> None:
    """Draw one ingredient's pieces, centred at (n, 2) dish coordinates, onto the canvas.

    Args:
        canvas: The render.
        ingredient: Whose look to use.
        centres: (n, 2) piece centres in dish coordinates.
        scale: Multiplies the ingredient's piece size.
        flatten: Vertical squash after rotation (side views lay pieces flat).
        angles: (n,) piece rotations; random when None.
        shadow: Drop-shadow opacity.
    """
    n = len(centres)
    if n == 0:
        return
    size = canvas.size
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))  # drawing sets alpha: the layer is its own mask
    draw_layer = ImageDraw.Draw(layer)
    sizes = ingredient.size * PIECE_SCALE * scale * canvas.nrng.uniform(0.8, 1.2, n)  # (n,)
    angles = canvas.nrng.uniform(0, 2 * np.pi, n) if angles is None else angles
    colours = _piece_colours(canvas, ingredient, n)
    piece_px = float(sizes.mean()) * canvas.frame.radius
    if ingredient.shape == "strand":
        _draw_strands(canvas, draw_layer, centres, sizes, angles, colours, flatten)
    elif ingredient.shape == "ring":
        _draw_rings(canvas, draw_layer, centres, sizes, colours, flatten)
    else:
        variants = _UNIT_SHAPES[ingredient.shape]
        verts = np.stack([variants[k] for k in canvas.nrng.integers(len(variants), size=n)])  # (n, V, 2)
        rotated = _rotate(verts, angles) * [1.0, flatten] * sizes[:, None, None]  # (n, V, 2)
        outlines = piece_px >= 2.5
        polygons = canvas.frame.px(centres[:, None, :] + rotated)  # (n, V, 2)
        inner = _inner_polygons(canvas, ingredient, centres, rotated)
        for i in range(n):
            flat = polygons[i].ravel().tolist()
            draw_layer.polygon(flat, fill=colours[i], outline=_darker(colours[i]) if outlines else None)
            if inner is not None:
                draw_layer.polygon(inner[0][i].ravel().tolist(), fill=inner[1][i])
        if ingredient.texture == "seeds" and piece_px >= 3:
            _draw_seeds(canvas, draw_layer, ingredient, centres, sizes)
    mask = layer.getchannel("A")
    colour = _texture(canvas, layer.convert("RGB"), ingredient.name, ingredient.texture, ingredient.second)
    _paste_layer(canvas, colour, mask, shadow)


def _inner_polygons(canvas: Canvas, ingredient: Ingredient, centres: np.ndarray,
                    rotated: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]]] | None:
    """Highlight (shaded) or centre (center/seeds) polygons drawn inside each piece, or None."""
    n = len(centres)
    if ingredient.texture == "shaded":
        shift = np.array([-0.25, -0.3]) * np.abs(rotated).max(axis=1)  # (n, 2) towards the light
        points = centres[:, None, :] + 0.5 * rotated + shift[:, None, :]
        colours = [rgb(ingredient.hsv, 0, -0.18, 0.16)] * n
    elif ingredient.texture in ("center", "seeds"):
        points = centres[:, None, :] + 0.58 * rotated
        colours = [rgb(ingredient.second, canvas.rng.uniform(-4, 4)) for _ in range(n)]
    else:
        return None
    return canvas.frame.px(points), colours


def _draw_seeds(canvas: Canvas, draw_layer: ImageDraw.ImageDraw, ingredient: Ingredient, centres: np.ndarray,
                sizes: np.ndarray) -> None:
    seed_colour = rgb(ingredient.second, 0, 0.3, -0.6)
    angles = canvas.nrng.uniform(0, 2 * np.pi, (len(centres), 5))  # (n, 5)
    radius = 0.32 * sizes[:, None]  # (n, 1)
    points = centres[:, None, :] + np.stack([np.cos(angles), np.sin(angles)], -1) * radius[..., None]
    for x, y in canvas.frame.px(points).reshape(-1, 2).tolist():
        draw_layer.point((x, y), fill=seed_colour)


def _draw_strands(canvas: Canvas, draw_layer: ImageDraw.ImageDraw, centres: np.ndarray, sizes: np.ndarray,
                  angles: np.ndarray, colours: list[tuple[int, int, int]], flatten: float) -> None:
    """Noodles, shreds: wiggly polylines (a random walk of 6 points)."""
    steps = 6
    turns = np.cumsum(canvas.nrng.normal(0, 0.55, (len(centres), steps)), axis=1) + angles[:, None]  # (n, steps)
    step_len = (2.0 * sizes / steps)[:, None]
    deltas = np.stack([np.cos(turns), np.sin(turns) * flatten], -1) * step_len[..., None]  # (n, steps, 2)
    paths = centres[:, None, :] + np.cumsum(deltas, axis=1) - deltas.sum(axis=1, keepdims=True) / 2
    width = max(1, round(float(sizes.mean()) * 0.16 * canvas.frame.radius))
    for path, colour in zip(canvas.frame.px(paths), colours):
        flat = path.ravel().tolist()
        draw_layer.line(flat, fill=_darker(colour, 0.8), width=width + 1)
        draw_layer.line(flat, fill=colour, width=width)


def _draw_rings(canvas: Canvas, draw_layer: ImageDraw.ImageDraw, centres: np.ndarray, sizes: np.ndarray,
                colours: list[tuple[int, int, int]], flatten: float) -> None:
    """Onion, squid, olive rings: ellipse outlines (axis-aligned after the frame's tilt)."""
    frame = canvas.frame
    for (x, y), size, colour in zip(frame.px(centres).tolist(), sizes.tolist(), colours):
        rx = size * frame.radius
        ry = rx * frame.squash * flatten
        width = max(1, round(rx * 0.38))
        box = (x - rx, y - ry, x + rx, y + max(ry, 0.5))
        draw_layer.ellipse(box, outline=colour, width=width)


# --- regions and counts -------------------------------------------------------------------------------


def disc_points(canvas: Canvas, n: int, radius: float, centre: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(n, 2) points uniform in a disc."""
    r = radius * np.sqrt(canvas.nrng.random(n))
    theta = canvas.nrng.uniform(0, 2 * np.pi, n)
    return np.stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)], axis=1)


def rect_points(canvas: Canvas, n: int, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """(n, 2) points uniform in an axis-aligned rectangle."""
    return np.stack([canvas.nrng.uniform(x0, x1, n), canvas.nrng.uniform(y0, y1, n)], axis=1)


def piece_count(canvas: Canvas, ingredient: Ingredient, amount: int, area: float, label: str,
                scale: float = 1.0) -> int:
    """Pieces for an ingredient: its amount sets how much of the region it covers (+-12% per render)."""
    level = amount / (AMOUNT_LEVELS - 1)
    coverage = {"garnish": 0.04 + 0.05 * level, "greens": 0.55 + 0.35 * level}.get(label, 0.1 + 0.16 * level)
    piece_area = _SHAPE_AREA[ingredient.shape] * (ingredient.size * PIECE_SCALE * scale) ** 2
    count = coverage * area / piece_area * canvas.rng.uniform(0.88, 1.12)
    limit = 260 if ingredient.shape in ("dot", "grain", "crumb") else 110
    return int(min(limit, max(2, round(count))))


@dataclass
class Dish:
    """A recipe resolved for drawing: ingredient looks with amounts and labels, base and sauce looks."""

    items: list[tuple[Ingredient, int, str]]
    base: Base | None
    sauce: Base | None

    @classmethod
    def from_spec(cls, spec: RecipeSpec) -> "Dish":
        return cls([(INGREDIENT_BY_NAME[name], amount, label) for name, amount, label in spec.items],
                   BASE_BY_NAME.get(spec.base or ""), BASE_BY_NAME.get(spec.sauce or ""))

    def labelled(self, *labels: str, exclude: bool = False) -> list[tuple[Ingredient, int, str]]:
        """Items whose label is (or, with exclude, is not) one of `labels`."""
        return [item for item in self.items if (item[2] in labels) != exclude]


def scatter(canvas: Canvas, items: list[tuple[Ingredient, int, str]], radius: float,
            centre: tuple[float, float] = (0.0, 0.0), scale: float = 1.0) -> None:
    """Scatter each item's pieces uniformly over a disc, one ingredient layer at a time."""
    area = np.pi * radius**2
    for ingredient, amount, label in items:
        n = piece_count(canvas, ingredient, amount, area, label, scale)
        draw_pieces(canvas, ingredient, disc_points(canvas, n, radius, centre), scale=scale)


Layout = Callable[[Canvas, Dish], None]


# --- dish furniture -----------------------------------------------------------------------------------


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 40) -> np.ndarray:
    """(n, 2) outline of an ellipse in dish coordinates."""
    return _ngon(n, rx, ry) + [cx, cy]


def wobbly_disc(canvas: Canvas, cx: float, cy: float, radius: float, wobble: float = 0.08, n: int = 32) -> np.ndarray:
    """(n, 2) outline of an irregular disc (sauce pools, mounds)."""
    phase = canvas.nrng.uniform(0, 2 * np.pi, 3)
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = radius * (1 + wobble * (np.sin(2 * theta + phase[0]) + np.sin(3 * theta + phase[1]) * 0.7
                                + np.sin(5 * theta + phase[2]) * 0.4) / 2.1)
    return np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], axis=1)


def field(canvas: Canvas, outline: np.ndarray, hsv: HSV, texture: str = "noise", key: str = "field",
          edge: float = 0.75, shadow: float = 0.3) -> None:
    """A textured colour field (broth, dough, rice mound, bread) with a darker edge."""
    size = canvas.size
    colour = rgb(hsv, canvas.rng.uniform(-3, 3), canvas.rng.uniform(-0.04, 0.04), canvas.rng.uniform(-0.04, 0.04))
    layer, mask = Image.new("RGB", (size, size), colour), Image.new("L", (size, size), 0)
    flat = canvas.frame.px(outline).ravel().tolist()
    ImageDraw.Draw(mask).polygon(flat, fill=255)
    ImageDraw.Draw(layer).polygon(flat, fill=colour, outline=_darker(colour, edge),
                                  width=max(1, round(size / 90)))
    second = (hsv[0], hsv[1] * 0.8, hsv[2] * 0.8)
    layer = _texture(canvas, layer, key, texture, second)
    _paste_layer(canvas, layer, mask, shadow)


def plate(canvas: Canvas, radius: float = 0.98, centre: tuple[float, float] = (0.0, 0.0), ry_scale: float = 1.0,
          bowl: bool = False) -> None:
    """A round plate (flat rim ring) or bowl (deeper, darker inner wall)."""
    hsv = canvas.rng.choice(_PLATES)
    cx, cy = centre
    shadow = ellipse(cx + 0.05, cy + 0.07, radius, radius * ry_scale)
    canvas.polygon(shadow, fill=_darker(rgb(hsv), 0.35))
    canvas.polygon(ellipse(cx, cy, radius, radius * ry_scale), fill=rgb(hsv), outline=_darker(rgb(hsv), 0.8))
    inner = 0.86 if bowl else 0.74
    canvas.polygon(ellipse(cx, cy, radius * inner, radius * inner * ry_scale),
                   fill=rgb(hsv, 0, 0.02, -0.12 if bowl else -0.04))


def board(canvas: Canvas, half_w: float, half_h: float) -> None:
    """A wooden board (rectangle with grain) under platters and pizzas."""
    hsv = (canvas.rng.uniform(22, 36), canvas.rng.uniform(0.4, 0.65), canvas.rng.uniform(0.5, 0.8))
    outline = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    canvas.polygon(outline + [0.05, 0.07], fill=_darker(rgb(hsv), 0.35))
    field(canvas, outline, hsv, "stripes", key="board", edge=0.7, shadow=0.0)


def drizzle(canvas: Canvas, sauce: Base, radius: float, lines: int, centre: tuple[float, float] = (0.0, 0.0)) -> None:
    """Sauce drizzled as a few wavy lines over the food."""
    draw = ImageDraw.Draw(canvas.image)
    width = max(1, round(canvas.size / 70))
    for _ in range(lines):
        start = disc_points(canvas, 1, radius, centre)[0]
        heading = canvas.rng.uniform(0, 2 * np.pi)
        turns = heading + np.cumsum(canvas.nrng.normal(0, 0.4, 8))
        path = start + np.cumsum(np.stack([np.cos(turns), np.sin(turns)], 1) * radius * 0.18, axis=0)
        draw.line(canvas.frame.px(path).ravel().tolist(), fill=rgb(sauce.hsv, 0, 0.05, -0.05), width=width,
                  joint="curve")


# --- scene: table, occluders, light -------------------------------------------------------------------


def table(size: int, rng: random.Random, nrng: np.random.Generator) -> Image.Image:
    """Background: wood, checked cloth, stone or plain, each with random colour."""
    kind = rng.choice(("wood", "cloth", "stone", "plain", "wood"))
    ramp = np.arange(size, dtype=np.float32) / size
    yy, xx = ramp[:, None], ramp[None, :]  # broadcast to (H, W)
    low = Image.fromarray((nrng.random((8, 8)) * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    noise = np.asarray(low, dtype=np.float32) / 255.0  # (H, W) smooth in 0..1
    if kind == "wood":
        base = np.array(rgb((rng.uniform(18, 38), rng.uniform(0.35, 0.7), rng.uniform(0.3, 0.75))), np.float32)
        axis = xx if rng.random() < 0.5 else yy
        grain = 1 + 0.12 * np.sin(axis * rng.uniform(30, 70) + noise * 6) + 0.05 * (noise - 0.5)
        array = base * grain[..., None]
    elif kind == "cloth":
        colour_a = np.array(rgb((rng.uniform(0, 360), rng.uniform(0.3, 0.8), rng.uniform(0.5, 0.9))), np.float32)
        colour_b = np.array(rgb((0, 0, rng.uniform(0.85, 1.0))), np.float32)
        cells = rng.uniform(5, 12)
        check = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2)[..., None]
        array = check * colour_a + (1 - check) * colour_b
    else:
        value = rng.uniform(0.55, 0.92) if kind == "stone" else rng.uniform(0.25, 0.95)
        base = np.array(rgb((rng.uniform(0, 360), rng.uniform(0, 0.25), value)), np.float32)
        array = base * (1 + (0.18 if kind == "stone" else 0.05) * (noise - 0.5))[..., None]
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def occlude(image: Image.Image, rng: random.Random) -> None:
    """Partly cover the scene with a napkin, a utensil or a glass (or nothing)."""
    size = image.size[0]
    draw = ImageDraw.Draw(image)
    kind = rng.choices(("none", "napkin", "utensil", "glass"), weights=(0.35, 0.25, 0.25, 0.15))[0]
    side = rng.randrange(4)

    def from_side(u: float, v: float) -> tuple[float, float]:
        """u along the chosen edge, v inward from it (both 0..1 of the image size)."""
        x, y = [(u, v), (1 - v, u), (u, 1 - v), (v, u)][side]
        return x * size, y * size

    if kind == "napkin":
        u, depth, skew = rng.uniform(0.1, 0.7), rng.uniform(0.14, 0.3), rng.uniform(-0.1, 0.1)
        corners = [from_side(u, -0.1), from_side(u + 0.45, -0.1), from_side(u + 0.45 + skew, depth),
                   from_side(u + skew, depth)]
        colour = rgb((rng.uniform(0, 360), rng.uniform(0, 0.45), rng.uniform(0.75, 1.0)))
        draw.polygon(corners, fill=colour, outline=_darker(colour, 0.8))
        draw.line([from_side(u + 0.2, -0.1), from_side(u + 0.2 + skew, depth)], fill=_darker(colour, 0.85),
                  width=max(1, size // 100))
    elif kind == "utensil":
        grey = rgb((210, 0.05, rng.uniform(0.6, 0.85)))
        u, depth = rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.5)
        tip = from_side(u, depth)
        draw.line([from_side(u, -0.05), tip], fill=grey, width=max(2, size // 32))
        head = size * 0.07
        draw.ellipse((tip[0] - head, tip[1] - head, tip[0] + head, tip[1] + head), fill=grey,
                     outline=_darker(grey, 0.7))
    elif kind == "glass":
        x, y = from_side(rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.12))
        radius = size * rng.uniform(0.12, 0.2)
        overlay = image.copy()
        ImageDraw.Draw(overlay).ellipse((x - radius, y - radius, x + radius, y + radius), fill=(225, 235, 240),
                                        outline=(150, 160, 170), width=max(1, size // 60))
        image.paste(Image.blend(image, overlay, 0.55))


def light(image: Image.Image, rng: random.Random) -> Image.Image:
    """Global lighting: brightness, colour cast and a linear light gradient."""
    size = image.size[0]
    array = np.asarray(image, dtype=np.float32)  # (H, W, 3)
    gain = rng.uniform(0.78, 1.18) * np.array([1 + rng.gauss(0, 0.06) for _ in range(3)], np.float32)
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.35)
    ramp = (np.arange(size, dtype=np.float32) / size - 0.5) * strength
    gradient = 1 + ramp[None, :] * math.cos(angle) + ramp[:, None] * math.sin(angle)  # (H, W)
    array = array * gain * gradient[..., None]
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """JPEG bytes (no metadata, so bytes depend on pixels and quality only)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
