"""The `ttscale serve` commands (being written; see the open issue)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ttscale app."""
