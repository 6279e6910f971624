"""User-facing errors: each carries one line that names the problem and the fix."""

from __future__ import annotations


class TtscaleError(Exception):
    """An error caused by the user's input or environment; the CLI prints it as one line."""


class ConfigError(TtscaleError):
    """A bad value in a config, flag or input file."""


class UnknownNameError(ConfigError):
    """A registry lookup for a name that is not registered."""


def describe_validation_error(error: "object", where: str = "") -> str:
    """Turn a pydantic ValidationError into one line naming each bad field."""
    parts = []
    for item in error.errors():  # type: ignore[attr-defined]
        field = ".".join(str(p) for p in item["loc"]) or "(root)"
        parts.append(f"{field}: {item['msg']} (got {item.get('input')!r})")
    prefix = f"{where}: " if where else ""
    return prefix + "; ".join(parts)
