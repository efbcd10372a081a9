"""Help and error text as a person reads it, over typer's defaults (typer >= 0.29).

- A boolean flag takes no value, but typer shows a `<bool>` type beside it (`--json <bool>`), as if
  it did: flags get no type column.
- A variadic argument shows its Python type (`<list[Path]>`): it shows `<path>...` instead, and a
  repeatable option its choices without `list[...]`.
- typer validates values with pydantic, whose messages for a `ValueError` start with
  "Value error, ": the prefix is dropped ("'foo' is not one of 'micro', ...").

Each fix is applied only where typer still has the hook it replaces, so a typer release that
changes them degrades to typer's own text instead of failing (tests/test_cli_help.py checks the
text itself).
"""

from __future__ import annotations

import re
from typing import Any

_PYDANTIC_PREFIX = re.compile(r"^(Value|Assertion) error, ")


def _tidy_message(get_error_msg: Any) -> Any:
    def get_error_msg_tidy(exc: Any) -> str:
        return _PYDANTIC_PREFIX.sub("", get_error_msg(exc))

    get_error_msg_tidy.__wrapped__ = get_error_msg  # type: ignore[attr-defined]
    return get_error_msg_tidy


def tidy_typer() -> None:
    """Apply the fixes above once (idempotent)."""
    try:
        from typer import _coercion, _param_types, core
    except ImportError:  # another typer layout: keep its defaults
        return
    option, argument = getattr(core, "TyperOption", None), getattr(core, "TyperArgument", None)
    if option is not None and not getattr(option, "_malm_tidy", False):
        option_type = option.display_type_rich

        def option_display_type(self: Any, ctx: Any) -> str | None:
            if getattr(self, "is_flag", False) and self.metavar is None:
                return None
            shown = option_type(self, ctx)
            match = re.fullmatch(r"<list\[(.+)\]>", shown or "")
            return f"<{match.group(1)}>" if match else shown  # repeatable: its help says so

        option.display_type_rich = option_display_type
        option._malm_tidy = True
    if argument is not None and not getattr(argument, "_malm_tidy", False):
        argument_type = argument.display_type_rich

        def argument_display_type(self: Any, ctx: Any) -> str | None:
            shown = argument_type(self, ctx)
            match = re.fullmatch(r"<list\[(\w+)\]>", shown or "")
            return f"<{match.group(1).lower()}>..." if match else shown

        argument.display_type_rich = argument_display_type
        argument._malm_tidy = True
    for module in (_coercion, _param_types):
        current = getattr(module, "get_error_msg", None)
        if current is not None and not hasattr(current, "__wrapped__"):
            module.get_error_msg = _tidy_message(current)
