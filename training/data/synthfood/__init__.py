"""SynthFood: the procedural default dataset (generate.py), its vocabulary, recipes, layouts, renderer and cache."""
