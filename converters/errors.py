"""The base of every error converters/ raises for a person to read (export, index, report)."""


class ConverterError(Exception):
    """An expected failure while turning runs into edge artifacts; the message says what to do."""
