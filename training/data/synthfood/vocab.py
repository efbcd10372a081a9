"""SynthFood vocabulary: ingredients with their looks, bases/sauces, pantry items and dish types.

Pure data plus tiny parsers; the design is described in `malm_edge.training.data.synthfood.generate`.
Tables are kept as aligned text so a reader can scan and edit them like a spreadsheet.
"""

from __future__ import annotations

from dataclasses import dataclass

SHAPES = (
    "circle", "cube", "wedge", "halfmoon", "crescent", "leaf", "grain", "crumb",
    "stick", "blob", "dot", "slice", "ring", "strand",
)
TEXTURES = ("flat", "noise", "speckle", "stripes", "spots", "shaded", "center", "seeds")


@dataclass(frozen=True)
class Ingredient:
    """A visible ingredient: how its pieces look and how its amount is written.

    Attributes:
        name: Name as written in an ingredient line ("carrots").
        hsv: Base colour (hue in degrees, saturation and value in 0..1); pieces jitter around it.
        shape: Piece shape, one of SHAPES.
        size: Piece half-extent in dish units (the dish radius is 1).
        texture: Surface pattern, one of TEXTURES.
        second: Secondary colour used by the texture (seeds, stripes, centre), HSV.
        unit: How amounts are written: "cup", "g", "count", "tbsp".
        category: Pool the dish types draw from ("veg", "fruit", "protein", ...).
        hue_jitter: Per-piece hue spread in degrees.
    """

    name: str
    hsv: tuple[float, float, float]
    shape: str
    size: float
    texture: str
    second: tuple[float, float, float]
    unit: str
    category: str
    hue_jitter: float = 6.0


@dataclass(frozen=True)
class Base:
    """A base, sauce or liquid seen as a colour field (broth, pizza dough, bread, sponge...)."""

    name: str
    hsv: tuple[float, float, float]
    unit: str
    kind: str


@dataclass(frozen=True)
class Slot:
    """One group of ingredients a dish type asks for: categories to draw from and how many."""

    label: str
    categories: tuple[str, ...]
    low: int
    high: int


@dataclass(frozen=True)
class DishType:
    """A dish type sets the layout (placement rule), the base and which ingredients fit.

    Attributes:
        name: Class name written to `class` ("pizza").
        nouns: Title synonyms ("Pizza", "Flatbread").
        layout: Placement rule used by the renderer.
        bases: Base kinds the dish needs (one is picked per recipe), or empty.
        sauces: Sauce kinds it may carry, or empty.
        sauce_prob: Probability that a recipe of this dish has a sauce.
        slots: Ingredient slots; slot "garnish" pieces are small and sparse.
        exclude_shapes: Shapes that do not fit the layout (no noodles on skewers).
        vessel: Word used in instructions ("pot", "pan", "oven").
    """

    name: str
    nouns: tuple[str, ...]
    layout: str
    bases: tuple[str, ...]
    sauces: tuple[str, ...]
    sauce_prob: float
    slots: tuple[Slot, ...]
    exclude_shapes: tuple[str, ...] = ()
    vessel: str = "pan"


# name | hue sat val | shape size | texture | second hue sat val | unit | category
_INGREDIENT_TABLE = """
carrots              |  25 .85 .95 | cube .06     | noise   |  30 .9 .7   | cup   | veg
sweet potato         |  18 .75 .85 | cube .07     | speckle |  20 .5 .6   | cup   | veg
butternut squash     |  33 .80 .97 | cube .075    | flat    |  33 .6 .8   | cup   | veg
pumpkin              |  27 .90 .90 | wedge .09    | stripes |  30 .95 .7  | cup   | veg
zucchini             |  90 .50 .55 | circle .07   | center  |  70 .25 .9  | count | veg
cucumber             | 100 .45 .70 | circle .07   | seeds   |  80 .2 .92  | count | veg
tomatoes             |   5 .85 .88 | wedge .08    | seeds   |  20 .7 .95  | count | veg
cherry tomatoes      |   2 .90 .90 | circle .05   | shaded  |   5 .6 1.   | cup   | veg
red bell pepper      |   0 .90 .85 | stick .08    | shaded  |   5 .6 1.   | count | veg
green bell pepper    | 110 .80 .58 | stick .08    | shaded  | 105 .5 .8   | count | veg
yellow bell pepper   |  50 .90 .95 | stick .08    | shaded  |  55 .5 1.   | count | veg
red onion            | 310 .50 .55 | ring .07     | flat    | 300 .2 .9   | count | veg
onion                |  50 .15 .92 | ring .07     | flat    |  50 .1 .8   | count | veg
spring onions        | 110 .70 .70 | ring .03     | flat    |  90 .3 .9   | count | veg
mushrooms            |  30 .30 .70 | halfmoon .06 | speckle |  30 .4 .45  | cup   | veg
broccoli             | 120 .60 .45 | blob .07     | speckle | 100 .7 .3   | cup   | veg
cauliflower          |  45 .12 .92 | blob .07     | speckle |  45 .2 .75  | cup   | veg
peas                 | 105 .75 .70 | circle .025  | shaded  | 100 .5 .9   | cup   | veg
corn                 |  48 .85 .95 | grain .025   | flat    |  45 .9 .8   | cup   | veg
green beans          | 110 .65 .55 | stick .09    | flat    | 110 .6 .45  | cup   | veg
asparagus            |  95 .55 .55 | stick .12    | stripes |  90 .4 .75  | count | veg
eggplant             | 280 .50 .35 | circle .08   | center  |  50 .25 .85 | count | veg
potatoes             |  45 .40 .85 | cube .07     | speckle |  40 .5 .6   | g     | veg
beetroot             | 335 .75 .45 | cube .06     | stripes | 335 .6 .7   | count | veg
radishes             | 350 .60 .85 | circle .045  | center  |   0 .05 .97 | count | veg
avocado              |  80 .60 .70 | wedge .08    | center  |  65 .6 .85  | count | veg
black olives         | 280 .20 .20 | ring .035    | flat    | 280 .2 .3   | cup   | veg
green olives         |  75 .60 .55 | circle .035  | center  |   5 .8 .7   | cup   | veg
jalapenos            | 115 .80 .50 | ring .04     | seeds   |  60 .3 .9   | count | veg
red chili            |   0 .90 .80 | stick .05    | flat    |   0 .9 .6   | count | veg
garlic               |  50 .10 .95 | crumb .02    | flat    |  50 .1 .8   | count | veg
ginger               |  40 .40 .85 | stick .035   | flat    |  40 .5 .7   | tbsp  | veg
bean sprouts         |  55 .15 .95 | strand .06   | flat    |  55 .1 .85  | cup   | veg
bok choy             | 100 .40 .80 | leaf .1      | stripes | 100 .15 .95 | count | veg
celery               |  85 .45 .75 | halfmoon .05 | stripes |  85 .3 .9   | count | veg
leeks                |  80 .35 .85 | ring .05     | center  |  70 .2 .95  | count | veg
red cabbage          | 300 .50 .45 | strand .08   | flat    | 300 .3 .8   | cup   | veg
lettuce              |  95 .60 .75 | leaf .14     | stripes |  90 .3 .95  | count | leafy
spinach              | 120 .70 .40 | leaf .1      | noise   | 120 .6 .3   | cup   | leafy
kale                 | 130 .60 .35 | leaf .11     | speckle | 130 .4 .55  | cup   | leafy
arugula              | 100 .60 .50 | leaf .08     | flat    | 100 .5 .4   | cup   | leafy
strawberries         | 355 .85 .85 | wedge .06    | speckle |  50 .7 .95  | cup   | fruit
blueberries          | 240 .60 .40 | circle .03   | shaded  | 240 .3 .6   | cup   | fruit
raspberries          | 345 .75 .75 | blob .04     | spots   | 345 .8 .55  | cup   | fruit
bananas              |  50 .45 .95 | circle .06   | center  |  50 .3 .85  | count | fruit
apples               |  40 .30 .95 | wedge .07    | speckle |   0 .8 .7   | count | fruit
mango                |  38 .85 .95 | cube .06     | flat    |  35 .9 .85  | count | fruit
pineapple            |  52 .75 .95 | wedge .07    | stripes |  45 .8 .8   | cup   | fruit
kiwi                 |  80 .70 .60 | circle .06   | seeds   |  60 .3 .95  | count | fruit
lemon                |  55 .80 .95 | circle .06   | center  |  55 .4 1.   | count | fruit
lime                 |  85 .70 .75 | wedge .05    | center  |  80 .4 .9   | count | fruit
orange               |  30 .90 .95 | circle .07   | center  |  35 .6 1.   | count | fruit
peaches              |  25 .60 .95 | wedge .07    | shaded  |  15 .8 .9   | count | fruit
cherries             | 350 .85 .55 | circle .035  | shaded  | 350 .6 .8   | cup   | fruit
pomegranate seeds    | 350 .80 .70 | grain .02    | shaded  | 350 .5 .95  | tbsp  | fruit
raisins              |  15 .60 .30 | crumb .02    | flat    |  15 .6 .2   | tbsp  | fruit
coconut flakes       |  40 .05 .97 | crumb .03    | flat    |  40 .1 .85  | tbsp  | fruit
chicken              |  35 .35 .85 | cube .07     | noise   |  30 .5 .7   | g     | protein
grilled chicken      |  30 .50 .72 | slice .09    | stripes |  20 .6 .3   | g     | protein
beef                 |  10 .55 .40 | cube .07     | noise   |  10 .5 .3   | g     | protein
ground beef          |  15 .50 .35 | crumb .03    | speckle |  15 .4 .5   | g     | protein
pork                 |  20 .35 .80 | slice .08    | noise   |  20 .4 .65  | g     | protein
bacon                |   5 .60 .60 | stick .09    | stripes |  30 .2 .95  | count | protein
ham                  | 350 .40 .90 | slice .1     | flat    | 350 .3 .8   | g     | protein
pepperoni            |   5 .80 .65 | circle .07   | spots   |  10 .4 .85  | g     | protein
sausage              |  15 .55 .55 | circle .06   | speckle |  20 .3 .8   | count | protein
meatballs            |  20 .60 .40 | blob .07     | speckle |  20 .5 .25  | count | protein
tofu                 |  50 .15 .92 | cube .07     | shaded  |  50 .1 1.   | g     | protein
boiled eggs          |  50 .05 .98 | circle .08   | center  |  45 .9 .95  | count | protein
scrambled eggs       |  50 .70 .98 | blob .05     | noise   |  45 .8 .85  | count | protein
chickpeas            |  40 .45 .85 | circle .03   | shaded  |  40 .3 .95  | cup   | protein
black beans          | 270 .20 .15 | circle .025  | shaded  | 270 .1 .4   | cup   | protein
kidney beans         | 355 .70 .40 | grain .03    | shaded  | 355 .5 .6   | cup   | protein
lentils              |  30 .60 .60 | grain .015   | flat    |  30 .5 .5   | cup   | protein
shrimp               |  15 .60 .95 | crescent .06 | stripes |  10 .8 .85  | g     | seafood
salmon               |  15 .70 .95 | slice .08    | stripes |  20 .2 1.   | g     | seafood
tuna                 | 355 .70 .60 | slice .08    | flat    | 355 .6 .5   | g     | seafood
crab sticks          |   5 .60 .90 | stick .07    | stripes |   0 .05 .98 | count | seafood
squid rings          |  40 .10 .95 | ring .06     | flat    |  40 .2 .85  | g     | seafood
mussels              | 260 .30 .20 | blob .06     | center  |  25 .8 .9   | g     | seafood
white fish           |  40 .08 .95 | slice .09    | noise   |  40 .1 .85  | g     | seafood
mozzarella           |  50 .06 .98 | blob .07     | shaded  |  50 .03 1.  | g     | cheese
cheddar              |  38 .85 .95 | strand .05   | flat    |  38 .8 .85  | cup   | cheese
parmesan             |  50 .20 .95 | crumb .02    | flat    |  50 .2 .85  | tbsp  | cheese
feta                 |  50 .05 .97 | cube .05     | speckle |  50 .1 .85  | g     | cheese
paneer               |  45 .10 .95 | cube .06     | shaded  |  45 .05 1.  | g     | cheese
sour cream           |  50 .04 .99 | blob .06     | shaded  |  50 .02 1.  | tbsp  | cheese
spaghetti            |  45 .50 .95 | strand .2    | flat    |  45 .5 .8   | g     | pasta
penne                |  40 .60 .95 | stick .06    | stripes |  40 .6 .8   | g     | pasta
macaroni             |  45 .55 .95 | crescent .04 | flat    |  45 .5 .8   | g     | pasta
egg noodles          |  45 .65 .90 | strand .2    | flat    |  45 .6 .75  | g     | noodle
rice noodles         |  50 .08 .95 | strand .2    | flat    |  50 .08 .85 | g     | noodle
rice                 |  50 .05 .97 | grain .02    | flat    |  50 .05 .85 | cup   | grain
brown rice           |  35 .35 .80 | grain .02    | flat    |  35 .4 .65  | cup   | grain
quinoa               |  40 .30 .85 | dot .012     | flat    |  40 .4 .7   | cup   | grain
croutons             |  35 .60 .80 | cube .04     | speckle |  30 .7 .5   | cup   | crunchy
tortilla chips       |  45 .60 .90 | wedge .07    | speckle |  40 .7 .7   | cup   | crunchy
parsley              | 115 .70 .45 | crumb .015   | flat    | 115 .7 .35  | tbsp  | herb
cilantro             | 110 .70 .55 | leaf .03     | flat    | 110 .7 .45  | tbsp  | herb
chives               | 105 .70 .50 | stick .03    | flat    | 105 .7 .4   | tbsp  | herb
mint                 | 130 .55 .55 | leaf .04     | shaded  | 130 .4 .75  | tbsp  | herb
basil                | 115 .75 .55 | leaf .05     | shaded  | 115 .5 .75  | tbsp  | herb
dill                 |  95 .55 .50 | strand .03   | flat    |  95 .5 .4   | tbsp  | herb
peanuts              |  35 .55 .80 | grain .03    | shaded  |  35 .4 .95  | tbsp  | nut
sliced almonds       |  35 .30 .90 | halfmoon .03 | flat    |  30 .5 .7   | tbsp  | nut
walnuts              |  30 .55 .50 | blob .04     | noise   |  30 .5 .35  | tbsp  | nut
pine nuts            |  45 .30 .95 | grain .018   | flat    |  45 .3 .8   | tbsp  | nut
cashews              |  40 .30 .90 | crescent .035| shaded  |  40 .2 1.   | tbsp  | nut
sesame seeds         |  45 .25 .95 | dot .008     | flat    |  45 .2 .85  | tbsp  | seed
black sesame seeds   |   0 .00 .12 | dot .008     | flat    |   0 .0 .2   | tbsp  | seed
chocolate chips      |  20 .60 .25 | dot .02      | flat    |  20 .5 .35  | tbsp  | sweet
chocolate shavings   |  20 .60 .30 | strand .03   | flat    |  20 .5 .45  | tbsp  | sweet
sprinkles            | 300 .60 .92 | stick .015   | flat    | 200 .6 .9   | tbsp  | sweet
whipped cream        |  50 .03 .99 | blob .07     | shaded  |  50 .0 1.   | cup   | sweet
marshmallows         |  30 .05 .98 | cube .035    | shaded  |  30 .0 1.   | cup   | sweet
cookie crumbs        |  28 .65 .45 | crumb .025   | flat    |  28 .6 .3   | tbsp  | sweet
"""

# name | hue sat val | unit | kind
_BASE_TABLE = """
chicken broth        |  42 .55 .85 | cup   | broth
vegetable broth      |  35 .60 .70 | cup   | broth
miso broth           |  30 .55 .62 | cup   | broth
tomato soup base     |   8 .80 .80 | cup   | broth
coconut milk broth   |  45 .12 .95 | cup   | broth
tomato sauce         |   5 .82 .72 | cup   | savory
pesto                |  85 .70 .50 | tbsp  | savory
cream sauce          |  48 .12 .95 | cup   | savory
curry sauce          |  40 .85 .82 | cup   | curry
red curry sauce      |  15 .80 .75 | cup   | curry
green curry sauce    |  75 .55 .65 | cup   | curry
coconut curry sauce  |  38 .45 .92 | cup   | curry
teriyaki sauce       |  15 .80 .35 | tbsp  | glaze
sweet chili sauce    |  10 .80 .92 | tbsp  | glaze
peanut sauce         |  30 .70 .65 | tbsp  | glaze
salsa verde          |  80 .65 .55 | tbsp  | salsa
chipotle sauce       |  18 .75 .70 | tbsp  | salsa
mustard              |  50 .90 .82 | tbsp  | spread
mayonnaise           |  50 .15 .97 | tbsp  | spread
vinaigrette          |  45 .60 .85 | tbsp  | dressing
ranch dressing       |  50 .06 .97 | tbsp  | dressing
chocolate sauce      |  20 .65 .28 | tbsp  | syrup
maple syrup          |  30 .85 .60 | tbsp  | syrup
honey                |  42 .85 .88 | tbsp  | syrup
caramel sauce        |  30 .75 .75 | tbsp  | syrup
strawberry jam       | 352 .85 .70 | tbsp  | filling
custard              |  45 .55 .97 | cup   | filling
buttercream          |  40 .12 .98 | cup   | filling
chocolate ganache    |  20 .65 .25 | cup   | filling
pizza dough          |  40 .45 .90 | g     | dough
whole wheat pizza dough | 30 .55 .70 | g  | dough
white bread          |  38 .30 .95 | count | bread
whole wheat bread    |  28 .55 .65 | count | bread
rye bread            |  22 .55 .40 | count | bread
brioche buns         |  35 .75 .90 | count | bread
flour tortillas      |  45 .25 .93 | count | tortilla
corn tortillas       |  48 .60 .88 | count | tortilla
buttermilk pancake batter | 35 .60 .88 | cup | batter
buckwheat pancake batter | 25 .50 .55 | cup | batter
vanilla sponge       |  45 .45 .95 | g     | sponge
chocolate sponge     |  20 .60 .35 | g     | sponge
red velvet sponge    | 355 .75 .60 | g     | sponge
shortcrust pastry    |  38 .55 .88 | g     | pastry
sushi rice           |  50 .03 .97 | cup   | sushi
"""

PANTRY_INGREDIENTS: tuple[tuple[str, str], ...] = (
    ("salt", "tsp"), ("black pepper", "tsp"), ("olive oil", "tbsp"), ("vegetable oil", "tbsp"),
    ("water", "cup"), ("sugar", "tbsp"), ("all-purpose flour", "cup"), ("baking powder", "tsp"),
    ("garlic powder", "tsp"), ("ground cumin", "tsp"), ("smoked paprika", "tsp"),
    ("dried oregano", "tsp"), ("vanilla extract", "tsp"), ("white vinegar", "tbsp"),
    ("unsalted butter", "tbsp"), ("soy sauce", "tbsp"),
)
"""Invisible ingredients: they appear in the text only, never in the image."""

_SAVORY = ("veg", "protein", "seafood")
DISH_TYPES: tuple[DishType, ...] = (
    DishType("soup", ("Soup", "Broth", "Chowder", "Soup Bowl", "Potage"), "bowl_float", ("broth",), (), 0.0,
             (Slot("main", _SAVORY + ("noodle",), 2, 4), Slot("garnish", ("herb", "seed", "cheese"), 0, 1)),
             ("strand",), "pot"),
    DishType("salad", ("Salad", "Greens", "Salad Bowl", "Garden Salad"), "bowl_salad", (), ("dressing",), 0.6,
             (Slot("greens", ("leafy",), 1, 2), Slot("main", ("veg", "fruit", "protein", "cheese", "crunchy"), 2, 4),
              Slot("garnish", ("nut", "seed", "herb"), 0, 1)), (), "bowl"),
    DishType("pasta", ("Pasta", "Pasta Plate", "Noodles", "Bake"), "plate_pasta", (), ("savory",), 0.9,
             (Slot("pasta", ("pasta",), 1, 1), Slot("main", _SAVORY, 1, 3), Slot("garnish", ("cheese", "herb"), 0, 2)),
             (), "pot"),
    DishType("pizza", ("Pizza", "Flatbread", "Pie", "Pizzetta"), "pizza", ("dough",), ("savory",), 1.0,
             (Slot("cheese", ("cheese",), 1, 2), Slot("main", _SAVORY, 2, 4), Slot("garnish", ("herb",), 0, 1)),
             ("strand", "dot", "grain"), "oven"),
    DishType("layered cake", ("Cake", "Layer Cake", "Torte", "Gateau"), "cake", ("sponge",), ("filling",), 1.0,
             (Slot("main", ("fruit", "sweet", "nut"), 1, 3),), ("leaf",), "oven"),
    DishType("stir-fry", ("Stir-Fry", "Stir Fry", "Wok", "Saute"), "pan_stirfry", (), ("glaze",), 0.8,
             (Slot("main", ("veg", "protein", "seafood"), 3, 5), Slot("noodles", ("noodle",), 0, 1),
              Slot("garnish", ("seed", "nut", "herb"), 0, 1)), (), "wok"),
    DishType("sandwich", ("Sandwich", "Sub", "Club", "Melt", "Toastie"), "sandwich", ("bread",), ("spread",), 0.5,
             (Slot("main", ("leafy", "veg", "protein", "seafood", "cheese"), 2, 5),),
             ("strand", "dot", "grain", "crumb"), "pan"),
    DishType("rice and curry", ("Curry", "Curry Rice", "Masala Plate", "Curry Bowl"), "plate_curry", (),
             ("curry",), 1.0,
             (Slot("rice", ("grain",), 1, 1), Slot("main", _SAVORY, 2, 4), Slot("garnish", ("herb", "nut"), 0, 1)),
             ("strand",), "pot"),
    DishType("skewers", ("Skewers", "Kebabs", "Brochettes", "Satay"), "skewers", (), ("glaze",), 0.5,
             (Slot("main", ("protein", "seafood"), 1, 2), Slot("veg", ("veg", "fruit", "cheese"), 1, 3)),
             ("strand", "dot", "grain", "crumb", "leaf", "ring"), "grill"),
    DishType("sushi platter", ("Sushi", "Maki Platter", "Sushi Rolls", "Sushi Board"), "sushi", ("sushi",), (), 0.0,
             (Slot("main", ("seafood", "veg", "fruit", "protein"), 2, 4), Slot("garnish", ("seed",), 0, 1)),
             ("strand", "leaf", "ring", "grain", "crumb"), "board"),
    DishType("tacos", ("Tacos", "Taco Night", "Street Tacos", "Soft Tacos"), "tacos", ("tortilla",), ("salsa",), 0.5,
             (Slot("main", ("protein", "seafood"), 1, 1), Slot("veg", ("veg", "leafy", "cheese", "fruit"), 1, 3),
              Slot("garnish", ("herb",), 0, 1)), (), "pan"),
    DishType("pancakes stack", ("Pancakes", "Pancake Stack", "Flapjacks", "Hotcakes"), "pancakes", ("batter",),
             ("syrup",), 0.85, (Slot("main", ("fruit", "sweet", "nut"), 1, 3),), ("leaf",), "griddle"),
    DishType("poke bowl", ("Poke Bowl", "Grain Bowl", "Buddha Bowl", "Bowl"), "bowl_sectors", (), ("glaze",), 0.5,
             (Slot("rice", ("grain",), 1, 1), Slot("main", ("seafood", "protein"), 1, 1),
              Slot("veg", ("veg", "fruit", "leafy", "cheese"), 2, 4), Slot("garnish", ("seed", "herb"), 0, 1)),
             ("strand",), "bowl"),
    DishType("fruit tart", ("Tart", "Fruit Tart", "Galette", "Tartlet"), "tart", ("pastry",), ("filling",), 1.0,
             (Slot("main", ("fruit",), 2, 4), Slot("garnish", ("nut", "herb"), 0, 1)), ("leaf", "strand"), "oven"),
)
"""The dish types; each sets the layout, base and ingredient pools (`class` is `DishType.name`)."""


def _hsv(text: str) -> tuple[float, float, float]:
    hue, sat, val = (float(part) for part in text.split())
    return hue, sat, val


def _parse_ingredients(table: str) -> tuple[Ingredient, ...]:
    rows = []
    for line in table.strip().splitlines():
        name, colour, shape_size, texture, second, unit, category = (c.strip() for c in line.split("|"))
        shape, size = shape_size.split()
        hue_jitter = 40.0 if name == "sprinkles" else 6.0  # sprinkles are multicoloured
        rows.append(Ingredient(name, _hsv(colour), shape, float(size), texture, _hsv(second), unit, category,
                               hue_jitter))
    return tuple(rows)


def _parse_bases(table: str) -> tuple[Base, ...]:
    rows = []
    for line in table.strip().splitlines():
        name, colour, unit, kind = (c.strip() for c in line.split("|"))
        rows.append(Base(name, _hsv(colour), unit, kind))
    return tuple(rows)


INGREDIENTS: tuple[Ingredient, ...] = _parse_ingredients(_INGREDIENT_TABLE)
"""All visible ingredients (each with its own look)."""
BASES: tuple[Base, ...] = _parse_bases(_BASE_TABLE)
"""Bases and sauces, seen as colour fields (liquid, dough, bread, sponge)."""
INGREDIENT_BY_NAME: dict[str, Ingredient] = {ingredient.name: ingredient for ingredient in INGREDIENTS}
BASE_BY_NAME: dict[str, Base] = {base.name: base for base in BASES}
DISH_BY_NAME: dict[str, DishType] = {dish.name: dish for dish in DISH_TYPES}
INGREDIENT_NAMES: tuple[str, ...] = tuple(INGREDIENT_BY_NAME)
DISH_TYPE_NAMES: tuple[str, ...] = tuple(DISH_BY_NAME)


def _check_tables() -> None:
    """Fail at import on a table typo (unknown shape, texture, base kind or category)."""
    problems = [] if len(INGREDIENT_BY_NAME) == len(INGREDIENTS) else ["duplicate ingredient names"]
    problems += [f"{i.name}: shape {i.shape!r} or texture {i.texture!r}" for i in INGREDIENTS
                 if i.shape not in SHAPES or i.texture not in TEXTURES]
    kinds = {base.kind for base in BASES}
    categories = {ingredient.category for ingredient in INGREDIENTS}
    for dish in DISH_TYPES:
        if not set(dish.bases + dish.sauces) <= kinds:
            problems.append(f"{dish.name}: unknown base or sauce kind")
        if not all(set(slot.categories) <= categories for slot in dish.slots):
            problems.append(f"{dish.name}: unknown ingredient category")
    if problems:
        raise ValueError("synthfood_vocab tables: " + "; ".join(problems))


_check_tables()
