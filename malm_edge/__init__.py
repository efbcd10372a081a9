"""malm-edge: MALM food image-to-recipe retrieval, distilled for phones."""

__version__ = "0.1.0"
