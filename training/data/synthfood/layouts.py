"""SynthFood layouts: one placement rule per dish type, and the per-render entry point.

Each layout draws the dish's furniture (plate, bowl, board, bread...) and places every ingredient's
pieces by its rule (floating in broth, heaped on pasta, banded in a sandwich, threaded on skewers,
in sectors of a poke bowl...). `render_recipe_jpeg` seeds everything from (seed, recipe index,
render number), so any worker draws the same image. Design notes: `malm_edge.training.data.synthfood.generate`.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from malm_edge.training.data.synthfood.recipes import AMOUNT_LEVELS, RecipeSpec
from malm_edge.training.data.synthfood.render import (
    Canvas,
    Dish,
    Frame,
    Layout,
    board,
    disc_points,
    draw_pieces,
    drizzle,
    ellipse,
    encode_jpeg,
    field,
    light,
    occlude,
    piece_count,
    plate,
    rect_points,
    rgb,
    scatter,
    table,
    wobbly_disc,
)
from malm_edge.training.data.synthfood.vocab import DISH_BY_NAME, Ingredient

SIDE_VIEW_LAYOUTS = frozenset({"cake", "sandwich", "pancakes"})


def _level(amount: int) -> float:
    return amount / (AMOUNT_LEVELS - 1)


def _fit_scale(ingredient: Ingredient, target: float) -> float:
    """Scale that brings a piece near `target` half-extent (pieces on skewers, in sushi), kept in 0.6..1.8."""
    return min(1.8, max(0.6, target / ingredient.size))


def bowl_float(canvas: Canvas, dish: Dish) -> None:
    """Soup: a bowl of broth with pieces floating, garnish on top."""
    plate(canvas, bowl=True)
    if dish.base is not None:
        field(canvas, wobbly_disc(canvas, 0, 0, 0.8, 0.02), dish.base.hsv, "noise", key=dish.base.name, shadow=0)
    scatter(canvas, dish.labelled("garnish", exclude=True), 0.68)
    scatter(canvas, dish.labelled("garnish"), 0.6)


def bowl_salad(canvas: Canvas, dish: Dish) -> None:
    """Salad: a carpet of leaves, toppings scattered, dressing drizzled."""
    plate(canvas, bowl=True)
    scatter(canvas, dish.labelled("greens"), 0.76)
    scatter(canvas, dish.labelled("main"), 0.66)
    if dish.sauce is not None:
        drizzle(canvas, dish.sauce, 0.55, 3)
    scatter(canvas, dish.labelled("garnish"), 0.6)


def plate_pasta(canvas: Canvas, dish: Dish) -> None:
    """Pasta: sauce pool, a heap of pasta, toppings and garnish on the heap."""
    plate(canvas)
    if dish.sauce is not None:
        field(canvas, wobbly_disc(canvas, 0, 0, 0.55), dish.sauce.hsv, "noise", key=dish.sauce.name)
    for ingredient, amount, _ in dish.labelled("pasta"):
        n = piece_count(canvas, ingredient, amount, np.pi * 0.5**2, "greens")
        draw_pieces(canvas, ingredient, disc_points(canvas, n, 0.48))
    if dish.sauce is not None:
        for _ in range(canvas.rng.randint(3, 6)):
            x, y = disc_points(canvas, 1, 0.35)[0]
            field(canvas, wobbly_disc(canvas, x, y, canvas.rng.uniform(0.06, 0.12)), dish.sauce.hsv, "flat")
    scatter(canvas, dish.labelled("main"), 0.45)
    scatter(canvas, dish.labelled("garnish"), 0.5)


def pizza(canvas: Canvas, dish: Dish) -> None:
    """Pizza: dough with a crust, sauce, cheese, toppings scattered evenly."""
    if canvas.rng.random() < 0.5:
        board(canvas, 0.98, 0.98)
    else:
        plate(canvas)
    if dish.base is not None:
        field(canvas, wobbly_disc(canvas, 0, 0, 0.88, 0.03), dish.base.hsv, "speckle", key=dish.base.name)
    if dish.sauce is not None:
        field(canvas, wobbly_disc(canvas, 0, 0, 0.74, 0.04), dish.sauce.hsv, "noise", key=dish.sauce.name,
              shadow=0)
    scatter(canvas, dish.labelled("cheese"), 0.7)
    scatter(canvas, dish.labelled("main"), 0.7)
    scatter(canvas, dish.labelled("garnish"), 0.65)


def cake(canvas: Canvas, dish: Dish) -> None:
    """Layered cake, side view: sponge layers banded by filling, toppings on the top face."""
    plate(canvas, 0.98, (0, 0.55), ry_scale=0.22)
    top, bottom, half_w = -0.3, 0.55, 0.66
    sponge = dish.base.hsv if dish.base else (45, 0.45, 0.95)
    filling = dish.sauce.hsv if dish.sauce else (40, 0.12, 0.98)
    layers = canvas.rng.randint(2, 3)
    band = (bottom - top) / layers
    for k in range(layers):
        y0 = top + k * band
        body = np.array([[-half_w, y0], [half_w, y0], [half_w, y0 + band], [-half_w, y0 + band]])
        field(canvas, body, sponge, "speckle", key="sponge", shadow=0)
        if k > 0:
            cream = np.array([[-half_w, y0 - 0.035], [half_w, y0 - 0.035], [half_w, y0 + 0.035], [-half_w, y0 + 0.035]])
            field(canvas, cream, filling, "flat", shadow=0)
    field(canvas, ellipse(0, top, half_w, 0.16), filling, "noise", key="frosting", shadow=0)
    for ingredient, amount, label in dish.items:
        n = piece_count(canvas, ingredient, amount, 0.35, label)
        points = rect_points(canvas, n, -half_w * 0.85, half_w * 0.85, top - 0.1, top + 0.1)
        draw_pieces(canvas, ingredient, points, flatten=0.7)


def pan_stirfry(canvas: Canvas, dish: Dish) -> None:
    """Stir-fry: a dark pan with a handle, glaze, noodles and densely packed pieces."""
    dark = (canvas.rng.uniform(0, 360), 0.05, canvas.rng.uniform(0.12, 0.25))
    canvas.polygon(np.array([[0.85, -0.08], [1.6, -0.1], [1.6, 0.1], [0.85, 0.08]]), fill=(40, 32, 28))
    field(canvas, ellipse(0, 0, 0.93, 0.93), dark, "noise", key="pan", shadow=0.4)
    if dish.sauce is not None:
        field(canvas, wobbly_disc(canvas, 0, 0, 0.72), dish.sauce.hsv, "noise", key=dish.sauce.name, shadow=0)
    for ingredient, amount, _ in dish.labelled("noodles"):
        n = piece_count(canvas, ingredient, amount, 1.3, "greens")
        draw_pieces(canvas, ingredient, disc_points(canvas, n, 0.65))
    scatter(canvas, dish.labelled("main"), 0.7)
    scatter(canvas, dish.labelled("garnish"), 0.65)


def sandwich(canvas: Canvas, dish: Dish) -> None:
    """Sandwich, side view: bread, spread, then one band of pieces per filling, bread on top."""
    plate(canvas, 0.98, (0, 0.5), ry_scale=0.24)
    bread = dish.base.hsv if dish.base else (38, 0.3, 0.95)
    half_w, y = 0.78, 0.5
    field(canvas, np.array([[-half_w, y - 0.16], [half_w, y - 0.16], [half_w * 0.96, y], [-half_w * 0.96, y]]),
          bread, "speckle", key="bread")
    y -= 0.16
    if dish.sauce is not None:
        field(canvas, np.array([[-half_w, y - 0.03], [half_w, y - 0.03], [half_w, y], [-half_w, y]]),
              dish.sauce.hsv, "flat", shadow=0)
        y -= 0.03
    for ingredient, amount, _ in dish.items:
        thickness = 0.07 + 0.07 * _level(amount)
        n = max(3, int(2 * half_w / (ingredient.size * 1.1)))
        points = rect_points(canvas, n, -half_w * 0.95, half_w * 0.95, y - thickness * 0.7, y - thickness * 0.3)
        angles = canvas.nrng.normal(0, 0.2, n)
        draw_pieces(canvas, ingredient, points, scale=max(1.0, thickness / ingredient.size / 0.8),
                    flatten=0.45, angles=angles)
        y -= thickness
    dome = np.concatenate([[[half_w, y]], ellipse(0, y, half_w, 0.3, 24)[13:], [[-half_w, y]]])
    field(canvas, np.concatenate([dome, [[-half_w, y + 0.02], [half_w, y + 0.02]]]), bread, "speckle", key="bread")


def plate_curry(canvas: Canvas, dish: Dish) -> None:
    """Rice and curry: a rice mound on one side, curry with pieces on the other."""
    plate(canvas)
    for ingredient, amount, _ in dish.labelled("rice"):
        field(canvas, wobbly_disc(canvas, -0.38, 0, 0.42), ingredient.hsv, "speckle", key=ingredient.name)
        draw_pieces(canvas, ingredient, disc_points(canvas, 60 + 8 * amount, 0.36, (-0.38, 0)), shadow=0.15)
    if dish.sauce is not None:
        field(canvas, wobbly_disc(canvas, 0.33, 0.05, 0.48), dish.sauce.hsv, "noise", key=dish.sauce.name)
    scatter(canvas, dish.labelled("main"), 0.38, (0.33, 0.05))
    scatter(canvas, dish.labelled("garnish"), 0.65)


def skewers(canvas: Canvas, dish: Dish) -> None:
    """Skewers: 2-3 parallel sticks, pieces threaded in a repeating pattern (amount = repeats)."""
    if canvas.rng.random() < 0.5:
        board(canvas, 0.98, 0.75)
    else:
        plate(canvas)
    sequence = [item for item in dish.items for _ in range(1 + (_level(item[1]) > 0.6))]
    n_sticks = canvas.rng.randint(2, 3)
    stick_colour = (150, 110, 70)
    slots = 7
    positions: dict[str, list[tuple[float, float]]] = {item[0].name: [] for item in dish.items}
    for s in range(n_sticks):
        offset = (s - (n_sticks - 1) / 2) * 0.42
        canvas.polygon(np.array([[-0.92, offset - 0.02], [0.92, offset - 0.02], [0.92, offset + 0.02],
                                 [-0.92, offset + 0.02]]), fill=stick_colour)
        start = canvas.rng.randrange(len(sequence))
        for k in range(slots):
            ingredient = sequence[(start + k) % len(sequence)][0]
            positions[ingredient.name].append((-0.66 + k * 0.22, offset))
    for ingredient, _, _ in dish.items:
        centres = np.array(positions[ingredient.name]).reshape(-1, 2)
        draw_pieces(canvas, ingredient, centres, scale=_fit_scale(ingredient, 0.1), shadow=0.45)
    if dish.sauce is not None:
        drizzle(canvas, dish.sauce, 0.6, 2)


def sushi(canvas: Canvas, dish: Dish) -> None:
    """Sushi platter: a board with a grid of maki; each roll shows one or two fillings."""
    board(canvas, 0.98, 0.68)
    rice = dish.base.hsv if dish.base else (50, 0.03, 0.97)
    fillings = [item for item in dish.labelled("garnish", exclude=True)
                for _ in range(1 + round(2 * _level(item[1])))]
    canvas.rng.shuffle(fillings)
    rows, cols = 2, canvas.rng.choice((3, 4))
    centres = [(-0.72 + 1.44 * (c + 0.5) / cols, -0.3 + 0.6 * r) for r in range(rows) for c in range(cols)]
    positions: dict[str, list[tuple[float, float]]] = {}
    for k, (x, y) in enumerate(centres):
        field(canvas, ellipse(x, y, 0.19, 0.19, 20), (150, 0.35, 0.12), "flat", shadow=0.4)
        field(canvas, ellipse(x, y, 0.15, 0.15, 20), rice, "speckle", key="sushi-rice", shadow=0)
        for j in range(1 + (k % 2)):
            name = fillings[(k + j * 3) % len(fillings)][0].name
            positions.setdefault(name, []).extend((x + dx, y + dy) for dx, dy in disc_points(canvas, 2, 0.05))
    for ingredient, _, _ in dish.labelled("garnish", exclude=True):
        if ingredient.name in positions:
            draw_pieces(canvas, ingredient, np.array(positions[ingredient.name]),
                        scale=_fit_scale(ingredient, 0.06), shadow=0.2)
    for ingredient, amount, _ in dish.labelled("garnish"):
        draw_pieces(canvas, ingredient, rect_points(canvas, 20 + 5 * amount, -0.8, 0.8, -0.45, 0.45))


def tacos(canvas: Canvas, dish: Dish) -> None:
    """Tacos: 2-3 folded tortillas; fillings heaped along each open edge."""
    plate(canvas)
    tortilla = dish.base.hsv if dish.base else (45, 0.25, 0.93)
    count = canvas.rng.randint(2, 3)
    width = 1.5 / count
    for k in range(count):
        cx = -0.75 + width * (k + 0.5)
        shell = np.concatenate([[[cx - width * 0.48, 0.3]], ellipse(cx, 0.3, width * 0.48, 0.7, 40)[20:]])
        field(canvas, shell, tortilla, "speckle", key="tortilla")
        for ingredient, amount, label in dish.items:
            n = piece_count(canvas, ingredient, amount, width * 0.4, label)
            draw_pieces(canvas, ingredient, rect_points(canvas, n, cx - width * 0.36, cx + width * 0.36, -0.25, 0.22))
        if dish.sauce is not None:
            drizzle(canvas, dish.sauce, width * 0.3, 1, (cx, 0.0))
        lip = np.array([[cx - width * 0.48, 0.22], [cx + width * 0.48, 0.22], [cx + width * 0.44, 0.34],
                        [cx - width * 0.44, 0.34]])
        field(canvas, lip, tortilla, "speckle", key="tortilla", shadow=0.2)


def pancakes(canvas: Canvas, dish: Dish) -> None:
    """Pancake stack, side view: stacked discs, syrup on top and dripping, toppings on the top face."""
    plate(canvas, 0.98, (0, 0.5), ry_scale=0.24)
    batter = dish.base.hsv if dish.base else (35, 0.6, 0.88)
    stack = canvas.rng.randint(3, 6)
    y = 0.42
    for _ in range(stack):
        field(canvas, ellipse(0, y + 0.04, 0.7, 0.2), (batter[0], batter[1] + 0.1, batter[2] * 0.7), "flat",
              shadow=0.2)
        field(canvas, ellipse(0, y, 0.7, 0.2), batter, "noise", key="pancake", shadow=0)
        y -= 0.085
    y += 0.085
    if dish.sauce is not None:
        field(canvas, wobbly_disc(canvas, 0, y, 0.5) * [1.0, 0.3] + [0, 0.7 * y], dish.sauce.hsv, "flat", shadow=0)
        for _ in range(canvas.rng.randint(2, 4)):
            x = canvas.rng.uniform(-0.55, 0.55)
            drip = np.array([[x - 0.04, y], [x + 0.04, y], [x + 0.03, y + 0.25], [x - 0.03, y + 0.25]])
            canvas.polygon(drip, fill=rgb(dish.sauce.hsv))
    for ingredient, amount, label in dish.items:
        n = piece_count(canvas, ingredient, amount, 0.4, label)
        draw_pieces(canvas, ingredient, rect_points(canvas, n, -0.5, 0.5, y - 0.12, y + 0.1), flatten=0.7)


def bowl_sectors(canvas: Canvas, dish: Dish) -> None:
    """Poke bowl: grain base, each topping in its own sector (amount = sector width)."""
    plate(canvas, bowl=True)
    for ingredient, amount, _ in dish.labelled("rice"):
        field(canvas, ellipse(0, 0, 0.82, 0.82), ingredient.hsv, "speckle", key=ingredient.name, shadow=0)
    toppings = dish.labelled("main", "veg")
    weights = np.array([0.6 + _level(amount) for _, amount, _ in toppings])
    edges = np.concatenate([[0.0], np.cumsum(weights / weights.sum())]) * 2 * np.pi + canvas.rng.uniform(0, 6.3)
    for (ingredient, amount, label), a0, a1 in zip(toppings, edges[:-1], edges[1:]):
        area = 0.5 * (a1 - a0) * (0.78**2 - 0.2**2)
        n = int(piece_count(canvas, ingredient, amount, area, "greens") * 0.8)
        r = np.sqrt(canvas.nrng.uniform(0.2**2, 0.74**2, n))
        theta = canvas.nrng.uniform(a0 + 0.08, a1 - 0.08, n)
        draw_pieces(canvas, ingredient, np.stack([r * np.cos(theta), r * np.sin(theta)], 1))
    if dish.sauce is not None:
        drizzle(canvas, dish.sauce, 0.4, 2)
    scatter(canvas, dish.labelled("garnish"), 0.7)


def tart(canvas: Canvas, dish: Dish) -> None:
    """Fruit tart: fluted pastry, custard, each fruit in its own concentric ring."""
    plate(canvas)
    theta = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    radius = 0.9 + 0.03 * np.sin(24 * theta)
    pastry = dish.base.hsv if dish.base else (38, 0.55, 0.88)
    field(canvas, np.stack([radius * np.cos(theta), radius * np.sin(theta)], 1), pastry, "speckle", key="pastry")
    if dish.sauce is not None:
        field(canvas, ellipse(0, 0, 0.78, 0.78), dish.sauce.hsv, "noise", key=dish.sauce.name, shadow=0)
    rings = (0.66, 0.47, 0.28, 0.0)
    for (ingredient, amount, _), ring in zip(dish.labelled("main"), rings):
        scale = _fit_scale(ingredient, 0.08) * (0.85 + 0.3 * _level(amount))
        step = 2.1 * ingredient.size * scale
        n = 1 if ring == 0.0 else max(3, int(2 * np.pi * ring / step))
        phi = np.linspace(0, 2 * np.pi, n, endpoint=False) + canvas.rng.uniform(0, 1)
        centres = np.stack([ring * np.cos(phi), ring * np.sin(phi)], 1)
        draw_pieces(canvas, ingredient, centres, scale=scale * (1.6 if ring == 0.0 else 1.0), angles=phi)
    scatter(canvas, dish.labelled("garnish"), 0.75)


LAYOUTS: dict[str, Layout] = {
    "bowl_float": bowl_float, "bowl_salad": bowl_salad, "plate_pasta": plate_pasta, "pizza": pizza, "cake": cake,
    "pan_stirfry": pan_stirfry, "sandwich": sandwich, "plate_curry": plate_curry, "skewers": skewers,
    "sushi": sushi, "tacos": tacos, "pancakes": pancakes, "bowl_sectors": bowl_sectors, "tart": tart,
}


def _streams(seed: int, index: int, render: int) -> tuple[random.Random, np.random.Generator]:
    """Independent random streams for one render, from (seed, recipe index, render number) only."""
    sequence = np.random.SeedSequence([seed, index, render, 0x5F00D])
    return random.Random(int(sequence.generate_state(1)[0])), np.random.default_rng(sequence)


def _frame(size: int, side_view: bool, rng: random.Random) -> Frame:
    """Per-render pose: rotation, scale, offset and camera tilt."""
    scale = rng.uniform(0.8, 1.05) if side_view else rng.uniform(0.78, 1.08)
    return Frame(cx=size * (0.5 + rng.uniform(-0.09, 0.09)), cy=size * (0.5 + rng.uniform(-0.09, 0.09)),
                 radius=0.45 * size * scale,
                 angle=rng.uniform(-0.2, 0.2) if side_view else rng.uniform(0, 2 * np.pi),
                 squash=1.0 if side_view else rng.uniform(0.78, 1.0))


def render_recipe_image(spec: RecipeSpec, size: int, seed: int, render: int) -> tuple[Image.Image, int]:
    """Draw render number `render` of a recipe; returns the image and the JPEG quality to save it at."""
    rng, nrng = _streams(seed, spec.index, render)
    layout = DISH_BY_NAME[spec.dish].layout
    canvas = Canvas(table(size, rng, nrng), _frame(size, layout in SIDE_VIEW_LAYOUTS, rng), rng, nrng)
    LAYOUTS[layout](canvas, Dish.from_spec(spec))
    occlude(canvas.image, rng)
    return light(canvas.image, rng), rng.randint(55, 95)


def render_recipe_jpeg(spec: RecipeSpec, size: int, seed: int, render: int) -> bytes:
    """JPEG bytes of one render (quality varies per render, as JPEG noise augmentation)."""
    image, quality = render_recipe_image(spec, size, seed, render)
    return encode_jpeg(image, quality)
