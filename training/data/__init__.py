"""Datasets: the canonical format, importers, SynthFood, tokenizer and torch datasets."""
