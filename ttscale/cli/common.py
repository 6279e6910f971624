"""What every `ttscale` command shares: the consoles, KEY=VALUE options, and turning errors into one line."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from ttscale import lifecycle
from ttscale.errors import ConfigError, TtscaleError

console = Console()
errors = Console(stderr=True)
ENGINE_LOG = "engine.log"  # beside a run (or a trained verifier): what vLLM and the libraries print


def parse_options(pairs: list[str] | None, flag: str) -> dict[str, Any]:
    """KEY=VALUE pairs into a dict; values are parsed as YAML scalars (so 3 is an int)."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. {flag} terms=3")
        options[key.strip()] = yaml.safe_load(value) if value else ""
    return options


def _exception_types(name: str) -> tuple[type[BaseException], ...]:
    """`name` from typer's own copy of click (typer >= 0.2x) and from click, wherever each exists."""
    found: list[type[BaseException]] = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


# Typer 0.29 raises the exceptions of its private click copy, which are not click's: catch both.
CLICK_ERRORS = _exception_types("ClickException")
ABORTS = tuple({typer.Abort, *_exception_types("Abort")})


class RunInterrupted(Exception):
    """Ctrl-C or SIGTERM during a run; the message says where the finished work is and how to resume."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def usage_error_line(error: BaseException) -> str:
    """A click usage error as one line: what was wrong, and the --help that shows the usage."""
    message = " ".join(error.format_message().split()).rstrip(".")  # type: ignore[attr-defined]
    ctx = getattr(error, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"{message}{hint}"


def run_app(app: typer.Typer) -> None:
    """Run `app` and exit, printing a user's mistake as one line instead of a traceback."""
    try:
        code = app(standalone_mode=False)
    except CLICK_ERRORS as error:  # usage errors (bad flags, values, commands): exit 2
        if type(error).__name__ == "NoArgsIsHelpError":
            error.show()  # a bare `ttscale` or `ttscale models`: the help is the message
        else:
            errors.print(f"[red]error:[/red] {escape(usage_error_line(error))}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except RunInterrupted as error:
        errors.print(escape(str(error)), highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except lifecycle.Terminated:
        errors.print("terminated")
        sys.exit(lifecycle.TERMINATED_EXIT)
    except ABORTS:
        errors.print("aborted")
        sys.exit(1)
    except TtscaleError as error:
        errors.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        errors.print("interrupted")
        sys.exit(lifecycle.INTERRUPTED_EXIT)
    if code == lifecycle.INTERRUPTED_EXIT:  # typer turns Ctrl-C outside a run into Exit(130), silently
        errors.print("interrupted")
    sys.exit(code if isinstance(code, int) else 0)
