"""What every `ttscale` command shares: the consoles, KEY=VALUE options, --format and its tables,
and turning errors into one line."""

from __future__ import annotations

import csv
import importlib
import json
import sys
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable, Literal, Sequence

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from ttscale import lifecycle
from ttscale.errors import ConfigError, TtscaleError
from ttscale.problems import Split

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


# The --split of commands that read runs to fit or evaluate on (the same three choices everywhere).
SPLIT = typer.Option("all", "--split", help="Problems to use: all, or half a / half b by a stable hash of the problem id "
                     "(fit on one, evaluate on the other).")


def half(split: Split | None) -> Split | None:
    """The half a --split restricts to; None for every problem (all, or no --split)."""
    return None if split == "all" else split


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


class Format(str, Enum):
    """How a command prints its tables: for a person (table, markdown) or a program (json, csv)."""

    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


FORMAT = typer.Option(Format.table, "--format", help="table (fits the terminal's width), json, csv or markdown; "
                      "with the last three, progress goes to stderr and notes into the output (csv: to stderr).")


@dataclass(frozen=True)
class Column:
    """A table column: its header, and how a terminal table aligns and styles it."""

    name: str
    justify: Literal["left", "right"] = "left"
    style: str | None = None


@dataclass
class _Table:
    title: str
    columns: list[Column]
    rows: list[list[str] | None]  # None: a section break (a rule between groups of rows)


def plain(text: str) -> str:
    """Text without rich's markup ("[bold]x[/]" -> "x"), for json, csv and markdown."""
    return Text.from_markup(text).plain


class Output:
    """A command's tables and notes in the --format the user asked for: one implementation for
    every table command. A terminal table fits the terminal's width and never cuts a cell to "…"
    (parts that repeat the row's name, widths that keep every word whole, folding as the last
    resort); json, csv and markdown print once, at `finish()`, with running messages
    (`output.console`) on stderr, so nothing garbles them."""

    def __init__(self, format: Format = Format.table):
        self.format = Format(format)
        self._items: list[_Table | str] = []
        # Running messages (progress, "Starting the engine..."): beside a terminal table, and on
        # stderr where stdout is for a program to read or a page to paste.
        self.console = console if self.format is Format.table else errors

    def table(self, title: str, columns: Sequence[Column | str], rows: Iterable[Sequence[str] | None], *, key: int = 1) -> None:
        """Add a table; a row of None draws a section break (terminal) and is dropped elsewhere.

        On a terminal too narrow for every column, the table prints as parts that each repeat the
        first `key` columns (what names a row), so no word is cut; json, csv and markdown keep one table.
        """
        table = _Table(title, [c if isinstance(c, Column) else Column(c) for c in columns],
                       [None if row is None else [str(cell) for cell in row] for row in rows])
        if self.format is not Format.table:
            self._items.append(table)
            return
        parts = _column_groups(table, key, console.width)
        for number, group in enumerate(parts, start=1):
            title = f"{table.title} ({number}/{len(parts)})" if len(parts) > 1 and table.title else table.title
            console.print(self._rich(_Table(title, [table.columns[i] for i in group],
                                            [None if row is None else [row[i] for i in group] for row in table.rows])))

    def note(self, text: str) -> None:
        """A line of prose that belongs to the result (a legend, a verdict); rich markup allowed."""
        if self.format is Format.table:
            console.print(text)
        elif self.format is Format.csv:
            errors.print(text)
        else:
            self._items.append(text)

    def finish(self) -> None:
        """Print what json, csv or markdown collected (a terminal table printed as it went)."""
        tables = [item for item in self._items if isinstance(item, _Table)]
        if self.format is Format.json:
            print(json.dumps({
                "tables": [{"title": plain(t.title), "columns": [c.name for c in t.columns],
                            "rows": [dict(zip((c.name for c in t.columns), map(plain, row))) for row in t.rows if row is not None]}
                           for t in tables],
                "notes": [plain(item) for item in self._items if isinstance(item, str)],
            }, indent=2))
        elif self.format is Format.csv:
            writer = csv.writer(sys.stdout, lineterminator="\n")
            for number, table in enumerate(tables):
                if len(tables) > 1:  # more than one table: a blank line and the title before each
                    if number:
                        writer.writerow([])
                    writer.writerow([plain(table.title)])
                writer.writerow([c.name for c in table.columns])
                writer.writerows([plain(cell) for cell in row] for row in table.rows if row is not None)
        elif self.format is Format.markdown:
            print("\n\n".join(self._markdown(item) if isinstance(item, _Table) else plain(item) for item in self._items))
        self._items.clear()

    @staticmethod
    def _rich(table: _Table) -> Table:
        rich_table = Table(title=table.title or None)
        widths = _widths(table, console.width) or [None] * len(table.columns)
        for column, width in zip(table.columns, widths):
            rich_table.add_column(column.name, justify=column.justify, style=column.style, overflow="fold", width=width)
        for row in table.rows:
            if row is None:
                rich_table.add_section()
            else:
                rich_table.add_row(*row)
        return rich_table

    @staticmethod
    def _markdown(table: _Table) -> str:
        def line(cells: Iterable[str]) -> str:
            return "| " + " | ".join(plain(cell).replace("|", "\\|") for cell in cells) + " |"

        rule = "| " + " | ".join("---:" if c.justify == "right" else "---" for c in table.columns) + " |"
        body = [line(row) for row in table.rows if row is not None]
        title = [f"**{plain(table.title)}**", ""] if table.title else []
        return "\n".join([*title, line(c.name for c in table.columns), rule, *body])


def _words(table: _Table, i: int) -> tuple[int, int]:
    """Column i's narrowest and widest content: its longest word, and its longest cell (header included)."""
    cells = [table.columns[i].name, *(plain(row[i]) for row in table.rows if row is not None)]
    longest_word = max((cell_len(word) for cell in cells for word in cell.split()), default=1)
    return longest_word, max(longest_word, *(cell_len(cell) for cell in cells))


def _column_groups(table: _Table, key: int, width: int) -> list[list[int]]:
    """Columns packed into parts that fit `width` with no word cut: each column needs its longest
    word plus padding and a border (`_widths`); every part starts with the key columns."""
    def needed(i: int) -> int:
        return _words(table, i)[0] + 3

    keys = list(range(min(key, len(table.columns))))
    groups: list[list[int]] = [list(keys)]
    used = 1 + sum(needed(i) for i in keys)  # the left border
    for i in range(len(keys), len(table.columns)):
        if used + needed(i) > width and len(groups[-1]) > len(keys):
            groups.append(list(keys))
            used = 1 + sum(needed(k) for k in keys)
        groups[-1].append(i)
        used += needed(i)
    return groups


def _widths(table: _Table, width: int) -> list[int] | None:
    """Column widths that fit `width` and cut no word: each column gets its longest word, and the
    room left goes to the columns in proportion to what they would need more. None: no widths
    needed (the table fits as it is), or none possible (rich folds the overlong words)."""
    words = [_words(table, i) for i in range(len(table.columns))]
    frame = 1 + 3 * len(words)  # borders and each cell's padding
    if frame + sum(widest for _, widest in words) <= width:
        return None
    room = width - frame - sum(narrowest for narrowest, _ in words)
    wanted = [widest - narrowest for narrowest, widest in words]
    if room < 0 or not sum(wanted):
        return None
    return [narrowest + room * more // sum(wanted) for (narrowest, _), more in zip(words, wanted)]
