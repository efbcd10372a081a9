"""What every config dataclass shares: JSON-safe dicts, strict rebuilding and overriding, a short hash.

MalmConfig, StudentConfig, TrainConfig and DistillConfig all go through these, so a config saved in a
run folder reads back equal, an unknown field is an error wherever it comes from, and the hash that
ties a checkpoint or a bundle to its architecture is computed one way.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields, replace
from typing import Any, TypeVar

ConfigT = TypeVar("ConfigT")

# Machine-local paths: where weights were read from, not what the model is.
HASH_EXCLUDED = frozenset({"clip_weights"})


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-safe dict of a config dataclass (tuples become lists)."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(config).items()}


def _check_fields(cls: type, names: set[str]) -> None:
    unknown = names - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} fields {sorted(unknown)}; {cls.__name__} has no fields by those names"
        )


def from_dict(cls: type[ConfigT], data: dict[str, Any]) -> ConfigT:
    """Rebuild a config dataclass from `to_dict` output.

    Raises:
        ValueError: `data` has keys that `cls` does not define (a config from another version), or a
            value the config's own validation refuses.
    """
    _check_fields(cls, set(data))
    return cls(**data)


def with_overrides(config: ConfigT, **overrides: Any) -> ConfigT:
    """A validated copy of `config` with fields replaced (`dataclasses.replace` runs `__post_init__`).

    Raises:
        ValueError: An unknown field, or a value the config's validation refuses.
    """
    _check_fields(type(config), set(overrides))
    return replace(config, **overrides)


def config_hash(config: Any) -> str:
    """A short stable hash: sha256 of the sorted JSON, first 12 hex digits (`HASH_EXCLUDED` left out)."""
    data = {key: value for key, value in to_dict(config).items() if key not in HASH_EXCLUDED}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
