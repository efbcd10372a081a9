"""The base of every error training/ raises for a person to read (bad data, runs, weights)."""


class TrainingError(Exception):
    """An expected failure of training or its data; the message names the file and the cause."""
