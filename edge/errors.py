"""The base of every error edge/ raises for a person to read (bad bundles, images, catalogs)."""


class EdgeError(Exception):
    """An expected failure of the on-device runtime; the message names the file and the cause."""
