"""SynthFood recipes: families of near-identical recipes and the text written from them.

A family is a base recipe of one dish type plus variants that swap one or two ingredients (or the
sauce/base), so that telling family members apart needs local evidence in the image. Text (title,
ingredient lines with quantities, instructions) is drawn from templates; see
`malm_edge.training.data.synthfood.generate` for the whole design.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from malm_edge.training.data.synthfood.vocab import (
    BASE_BY_NAME,
    BASES,
    DISH_BY_NAME,
    DISH_TYPES,
    INGREDIENT_BY_NAME,
    INGREDIENTS,
    PANTRY_INGREDIENTS,
    DishType,
)

AMOUNT_LEVELS = 9
"""Amounts are an index 0..AMOUNT_LEVELS-1 into each unit's quantity ladder; more means more pieces."""

_QUANTITIES = {
    "cup": ("1/4 cup", "1/3 cup", "1/2 cup", "2/3 cup", "3/4 cup", "1 cup", "1 1/2 cups", "2 cups", "2 1/2 cups"),
    "g": ("50 g", "75 g", "100 g", "150 g", "200 g", "250 g", "300 g", "400 g", "500 g"),
    "oz": ("2 oz", "3 oz", "4 oz", "5 oz", "7 oz", "8 oz", "10 oz", "14 oz", "1 lb"),
    "count": ("1", "1", "2", "2", "3", "3", "4", "5", "6"),
    "tbsp": ("1 tsp", "2 tsp", "1 tbsp", "2 tbsp", "3 tbsp", "1/4 cup", "1/3 cup", "1/2 cup", "2/3 cup"),
}
_COUNT_WORDS = {"garlic": "cloves", "celery": "stalks", "lettuce": "heads", "bok choy": "heads",
                "asparagus": "spears", "bacon": "slices", "red chili": "", "ginger": "thumbs"}
_PREP_BY_SHAPE = {
    "cube": ("diced", "cubed", "chopped", "cut into bite-size cubes"),
    "circle": ("sliced", "cut into rounds", "thinly sliced"),
    "wedge": ("cut into wedges", "quartered"),
    "halfmoon": ("sliced", "halved and sliced"),
    "crescent": ("", "cooked", "peeled"),
    "leaf": ("torn", "fresh", "roughly chopped", "washed"),
    "grain": ("", "cooked", "rinsed"),
    "crumb": ("crumbled", "minced", "finely chopped", "grated"),
    "stick": ("cut into strips", "sliced into sticks", "julienned"),
    "blob": ("torn", "", "halved"),
    "dot": ("", "toasted"),
    "slice": ("thinly sliced", "sliced"),
    "ring": ("sliced into rings", "thinly sliced"),
    "strand": ("shredded", "", "grated"),
}
_OWNERS = ("Grandma", "Mom", "Nonna", "Auntie May", "Dad", "Chef Lee", "Rosa", "Uncle Joe", "Abuela", "Sam")
_DAYS = ("Tuesday", "Sunday", "Weeknight", "Holiday", "Lazy Friday", "Summer", "Winter", "Picnic", "Brunch")
_ADJECTIVES = ("Easy", "Quick", "Rustic", "Classic", "Hearty", "Simple", "Homestyle", "Fresh", "Spicy", "Zesty",
               "Ultimate", "Healthy", "Cozy", "Golden", "Smoky")
_GENERIC_TITLES = ("The Best {noun} Ever", "Weeknight {noun}", "{owner}'s Famous {noun}", "Leftover Night",
                   "Sunday Special", "Comfort Food Classic", "{day} Favourite", "Chef's Surprise",
                   "{adj} {noun}", "Family {noun}")


@dataclass(frozen=True)
class RecipeSpec:
    """What a SynthFood recipe is made of; the renderer draws it and the text is written from it.

    Attributes:
        index: Position in the dataset (the id is derived from it).
        family: Family number; members of one family share a dish and most ingredients.
        dish: Dish type name.
        base: Base name (bread, dough, broth...) or None.
        sauce: Sauce name or None.
        items: (ingredient name, amount level, slot label) per visible ingredient.
        pantry: Invisible pantry ingredients (name, unit).
    """

    index: int
    family: int
    dish: str
    base: str | None
    sauce: str | None
    items: tuple[tuple[str, int, str], ...]
    pantry: tuple[tuple[str, str], ...]

    def ingredient_names(self) -> tuple[str, ...]:
        """Visible ingredient names, in recipe order."""
        return tuple(name for name, _, _ in self.items)


def _pool(dish: DishType, categories: tuple[str, ...]) -> list[str]:
    return [i.name for i in INGREDIENTS if i.category in categories and i.shape not in dish.exclude_shapes]


def _pick_base(dish: DishType, kinds: tuple[str, ...], rng: random.Random) -> str | None:
    names = [base.name for base in BASES if base.kind in kinds]
    return rng.choice(names) if names else None


def _sample_items(dish: DishType, rng: random.Random) -> list[tuple[str, int, str]]:
    items: list[tuple[str, int, str]] = []
    for slot in dish.slots:
        pool = [name for name in _pool(dish, slot.categories) if name not in {n for n, _, _ in items}]
        for name in rng.sample(pool, rng.randint(slot.low, slot.high)):
            items.append((name, rng.randrange(AMOUNT_LEVELS), slot.label))
    return items


def _sample_base_recipe(dish: DishType, family: int, rng: random.Random) -> RecipeSpec:
    sauce = _pick_base(dish, dish.sauces, rng) if rng.random() < dish.sauce_prob else None
    pantry = tuple(rng.sample(PANTRY_INGREDIENTS, rng.randint(2, 4)))
    return RecipeSpec(0, family, dish.name, _pick_base(dish, dish.bases, rng), sauce,
                      tuple(_sample_items(dish, rng)), pantry)


def _swap_one(spec: RecipeSpec, rng: random.Random) -> RecipeSpec:
    """Replace one ingredient by another of its slot's pool (same amount), or change sauce/base."""
    dish = DISH_BY_NAME[spec.dish]
    if rng.random() < 0.15 and (spec.sauce or spec.base):
        if spec.sauce and (not spec.base or rng.random() < 0.5):
            return replace(spec, sauce=_pick_base(dish, dish.sauces, rng))
        return replace(spec, base=_pick_base(dish, dish.bases, rng))
    position = rng.randrange(len(spec.items))
    name, amount, label = spec.items[position]
    slot = next(s for s in dish.slots if s.label == label)
    used = set(spec.ingredient_names())
    pool = [candidate for candidate in _pool(dish, slot.categories) if candidate not in used]
    items = list(spec.items)
    items[position] = (rng.choice(pool), amount, label)
    return replace(spec, items=tuple(items))


def _signature(spec: RecipeSpec) -> tuple:
    return spec.base, spec.sauce, frozenset(spec.ingredient_names())


def sample_families(n_recipes: int, seed: int) -> list[RecipeSpec]:
    """Sample `n_recipes` recipe specs as families (a base recipe, then 1-2 ingredient variants).

    Dish types take turns so classes stay balanced; family sizes are 2-6.
    """
    rng = random.Random(f"synthfood-families-{seed}")
    specs: list[RecipeSpec] = []
    family = 0
    while len(specs) < n_recipes:
        dish = DISH_TYPES[family % len(DISH_TYPES)]
        base = _sample_base_recipe(dish, family, rng)
        members, seen = [base], {_signature(base)}
        for _ in range(rng.randint(1, 5) * 3):  # a few tries per wanted variant
            if len(members) >= min(6, n_recipes - len(specs)) or len(members) > rng.randint(1, 5):
                break
            variant = _swap_one(base, rng)
            if rng.random() < 0.5:
                variant = _swap_one(variant, rng)
            if _signature(variant) not in seen:
                members.append(variant)
                seen.add(_signature(variant))
        start = len(specs)
        specs.extend([replace(member, index=start + k) for k, member in enumerate(members)])
        family += 1
    return specs[:n_recipes]


# --- text -------------------------------------------------------------------------------------------


def _singular(name: str) -> str:
    if name.endswith("oes"):
        return name[:-2]
    if name.endswith("ies"):
        return name[:-3] + "y"
    return name[:-1] if name.endswith("s") else name


def _plural(name: str) -> str:
    return name if name.endswith("s") or " " in name and not name.endswith("pepper") else name + "s"


def _prep(name: str, rng: random.Random) -> str:
    ingredient = INGREDIENT_BY_NAME[name]
    if ingredient.category in ("herb",):
        return rng.choice(("chopped", "fresh", "finely chopped", ""))
    if ingredient.category in ("pasta", "noodle", "seed"):
        return rng.choice(("", "toasted")) if ingredient.category == "seed" else ""
    if ingredient.shape == "circle" and ingredient.size < 0.04:
        return rng.choice(("", "rinsed", "drained"))
    return rng.choice(_PREP_BY_SHAPE[ingredient.shape])


def _quantity(unit: str, amount: int, imperial: bool) -> str:
    if unit == "g" and imperial:
        unit = "oz"
    return _QUANTITIES[unit][amount]


def ingredient_line(name: str, amount: int, rng: random.Random, imperial: bool) -> str:
    """One ingredient line, e.g. "2 1/2 cups diced carrots" or "3 tomatoes, cut into wedges"."""
    unit = INGREDIENT_BY_NAME[name].unit
    prep = _prep(name, rng)
    if unit == "count":
        count = _QUANTITIES["count"][amount]
        word = _COUNT_WORDS.get(name)
        if word is not None:
            word = word[:-1] if count == "1" else word  # "1 clove garlic", "2 cloves garlic"
            noun = f"{word} {name}" if word else (_plural(name) if count != "1" else name)
        else:
            noun = _singular(name) if count == "1" else _plural(name)
        qty_noun = f"{count} {noun}"
    else:
        qty_noun = f"{_quantity(unit, amount, imperial)} {name}"
        if prep and " " not in prep and rng.random() < 0.6:
            qty, _, rest = qty_noun.partition(f" {name}")
            return f"{qty} {prep} {name}{rest}"
    return f"{qty_noun}, {prep}" if prep else qty_noun


def _base_line(name: str, rng: random.Random, imperial: bool) -> str:
    base = BASE_BY_NAME[name]
    return f"{_quantity(base.unit, rng.randrange(2, AMOUNT_LEVELS - 2), imperial)} {name}"


def _pantry_line(name: str, unit: str, rng: random.Random) -> str:
    if name in ("salt", "black pepper") and rng.random() < 0.5:
        return f"{name} to taste"
    qty = rng.choice({"tsp": ("1/2 tsp", "1 tsp", "2 tsp"), "tbsp": ("1 tbsp", "2 tbsp", "3 tbsp"),
                      "cup": ("1/2 cup", "1 cup", "2 cups")}[unit])
    return f"{qty} {name}"


def ingredient_lines(spec: RecipeSpec, rng: random.Random) -> list[str]:
    """Visible ingredients with quantities, the base and sauce, and invisible pantry items, lightly shuffled."""
    imperial = rng.random() < 0.4
    lines = [ingredient_line(name, amount, rng, imperial) for name, amount, _ in spec.items]
    lines += [_base_line(name, rng, imperial) for name in (spec.base, spec.sauce) if name]
    lines += [_pantry_line(name, unit, rng) for name, unit in spec.pantry]
    for _ in range(len(lines) // 2):  # local swaps keep a loosely "main things first" order
        k = rng.randrange(len(lines) - 1)
        lines[k], lines[k + 1] = lines[k + 1], lines[k]
    return lines


def _title_case(text: str) -> str:
    return " ".join(word if word[:1].isupper() else word.capitalize() for word in text.split())


def make_title(spec: RecipeSpec, rng: random.Random) -> str:
    """A title from templates with synonyms; sometimes generic, sometimes naming a pantry item."""
    dish = DISH_BY_NAME[spec.dish]
    noun = rng.choice(dish.nouns)
    names = [name for name, _, label in spec.items if label != "garnish"] or list(spec.ingredient_names())
    first, second = rng.sample(names, 2) if len(names) > 1 else (names[0], names[0])
    fill = {"noun": noun, "owner": rng.choice(_OWNERS), "day": rng.choice(_DAYS), "adj": rng.choice(_ADJECTIVES),
            "a": _title_case(first), "b": _title_case(second),
            "sauce": _title_case(spec.sauce or spec.base or first),
            "pantry": _title_case(spec.pantry[0][0].replace("unsalted ", "").replace("black ", ""))}
    templates = ("{a} {noun}", "{adj} {a} and {b} {noun}", "{owner}'s {day} {noun} with {a}",
                 "{noun} with {a} and {b}", "{adj} {a} {noun}", "{a}, {b} and {sauce} {noun}",
                 "{sauce} {noun}", "{pantry} {a} {noun}", "{owner}'s {day} {noun}")
    template = rng.choice(_GENERIC_TITLES) if rng.random() < 0.2 else rng.choice(templates)
    return template.format(**fill)


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


_FINISH = {
    "soup": ("Bring the {base} to a simmer in a large pot.", "Add the {main} and simmer for {n} minutes.",
             "Ladle into bowls and top with {garnish}."),
    "salad": ("Arrange the {greens} in a wide bowl.", "Scatter the {main} over the leaves.",
              "Drizzle with {sauce} and finish with {garnish}."),
    "pasta": ("Cook the {pasta} in salted boiling water until al dente, then drain.",
              "Toss the {pasta} with the {sauce} and the {main}.", "Serve topped with {garnish}."),
    "pizza": ("Stretch the {base} into a round and spread with {sauce}.",
              "Cover with {cheese}, then arrange the {main} on top.",
              "Bake at {temp} for {n} minutes until the crust is golden; finish with {garnish}."),
    "layered cake": ("Bake the {base} in two tins at {temp} for {n} minutes and let cool.",
                     "Sandwich the layers with {sauce}.", "Decorate the top with {main}."),
    "stir-fry": ("Heat a wok until smoking and add a splash of oil.",
                 "Stir-fry the {main} for {n} minutes, tossing often.",
                 "Add the {noodles} and {sauce}, toss to coat and sprinkle with {garnish}."),
    "sandwich": ("Toast the {base} lightly.", "Spread with {sauce}.",
                 "Layer the {main} between the slices, press and cut in half."),
    "rice and curry": ("Cook the {rice} and keep warm.", "Simmer the {main} in the {sauce} for {n} minutes.",
                       "Serve the curry beside the rice with {garnish}."),
    "skewers": ("Soak wooden skewers in water for 30 minutes.",
                "Thread the {main} and {veg} onto the skewers, alternating.",
                "Grill for {n} minutes, turning once, and brush with {sauce}."),
    "sushi platter": ("Season the {base} and spread it thinly over nori sheets.",
                      "Lay strips of {main} along one edge and roll up tightly.",
                      "Slice into rounds and sprinkle with {garnish}."),
    "tacos": ("Warm the {base} in a dry pan.", "Cook the {main} for {n} minutes until browned.",
              "Fill the tortillas with the {main} and {veg}, then add {sauce} and {garnish}."),
    "pancakes stack": ("Whisk the {base} until just smooth.",
                       "Cook ladlefuls on a hot griddle for {n} minutes a side.",
                       "Stack the pancakes, top with {main} and pour over {sauce}."),
    "poke bowl": ("Cook the {rice} and let it cool slightly.",
                  "Arrange the {main} and {veg} in sections over the rice.",
                  "Drizzle with {sauce} and sprinkle with {garnish}."),
    "fruit tart": ("Line a tart tin with the {base} and bake blind at {temp} for {n} minutes.",
                   "Fill the cooled case with {sauce}.", "Arrange the {main} in rings and scatter over {garnish}."),
}
_PREP_VERBS = {
    "cube": "Dice the {name}", "circle": "Slice the {name} into rounds", "wedge": "Cut the {name} into wedges",
    "halfmoon": "Halve and slice the {name}", "crescent": "Rinse and pat dry the {name}",
    "leaf": "Wash and dry the {name}", "grain": "Rinse the {name}", "crumb": "Finely chop the {name}",
    "stick": "Cut the {name} into thin strips", "blob": "Tear the {name} into pieces",
    "dot": "Toast the {name} in a dry pan", "slice": "Thinly slice the {name}",
    "ring": "Slice the {name} into thin rings", "strand": "Shred the {name}",
}
_PREP_ENDINGS = (".", " and set aside.", " and keep in a bowl.", "; keep them separate.")
_PANTRY_STEPS = {"tsp": ("Season with the {pantry}.", "Stir in the {pantry}."),
                 "tbsp": ("Heat the {pantry} over medium heat.", "Add the {pantry} and stir well."),
                 "cup": ("Add the {pantry} and bring to a gentle boil.", "Whisk in the {pantry}.")}
_EXTRA_STEPS = ("Taste and adjust the seasoning.", "Let rest for {n} minutes before serving.",
                "Serve immediately.", "Leftovers keep for {n2} days in the fridge.", "Preheat the oven to {temp}.")


def _prep_step(name: str) -> str:
    ingredient = INGREDIENT_BY_NAME[name]
    if ingredient.shape == "circle" and ingredient.size < 0.04:  # peas, beans, berries: no knife work
        return f"Rinse and drain the {name}"
    return _PREP_VERBS[ingredient.shape].format(name=name)


def make_instructions(spec: RecipeSpec, rng: random.Random) -> list[str]:
    """3-10 steps: prep of some ingredients, dish-specific assembly, pantry and filler steps."""
    by_label: dict[str, list[str]] = {}
    for name, _, label in spec.items:
        by_label.setdefault(label, []).append(name)
    fill = {key: _join(names) for key, names in by_label.items()}
    fallback = _join(list(spec.ingredient_names()))
    fill.update(base=spec.base or "dough", sauce=spec.sauce or rng.choice(("olive oil", "a little butter")),
                temp=rng.choice(("180C", "200C", "220C", "350F", "400F", "425F")),
                n=rng.randint(2, 25), n2=rng.randint(2, 5))
    for key in ("main", "greens", "pasta", "cheese", "noodles", "rice", "veg", "garnish"):
        fill.setdefault(key, fallback if key == "main" else rng.choice(("fresh herbs", "a pinch of salt", "pepper")))
    names = rng.sample(spec.ingredient_names(), min(len(spec.items), rng.randint(0, 3)))
    steps = [_prep_step(name) + rng.choice(_PREP_ENDINGS) for name in names]
    steps += [template.format(**fill) for template in _FINISH[spec.dish]]
    pantry_name, pantry_unit = spec.pantry[0]
    steps.insert(rng.randint(0, len(steps)), rng.choice(_PANTRY_STEPS[pantry_unit]).format(pantry=pantry_name))
    while len(steps) < 3 or (len(steps) < 10 and rng.random() < 0.3):
        steps.append(rng.choice(_EXTRA_STEPS).format(**fill))
    return steps[:10]


def recipe_text(spec: RecipeSpec, seed: int, base_title: str | None = None) -> tuple[str, list[str], list[str]]:
    """Title, ingredient lines and instructions of one recipe, seeded by (seed, index).

    Args:
        spec: The recipe.
        seed: Dataset seed.
        base_title: Title of the family's base recipe; variants sometimes keep it (realistic, and it
            means titles alone cannot tell family members apart).
    """
    rng = random.Random(f"synthfood-text-{seed}-{spec.index}")
    title = base_title if base_title is not None and rng.random() < 0.35 else make_title(spec, rng)
    return title, ingredient_lines(spec, rng), make_instructions(spec, rng)
