"""How every `berth` command shows what it got: tables that fit the terminal, records, JSON,
errors and progress. One place, so that every command (provisioner, attacher, watcher,
alerts) reads the same and scripts can rely on `--json`.

Tables are plain aligned text (no box drawing): at a terminal they fit its width (80
columns and up) by first hiding the least useful columns, then wrapping text columns;
an id column is never wrapped, cut or hidden, because every other command needs it.
Piped output (no terminal) is never squeezed: every column at full width, unless
`COLUMNS` says how wide to be.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

GAP = 2
MIN_WRAP = 8
T = TypeVar("T")


@dataclass(frozen=True)
class Column:
    """One table column. `get` is a key of the row or a function of it.

    `id=True`: shown whole, always (ids are what other commands take). `drop`: the order in
    which columns are hidden when the table is too wide (1 goes first; 0 never goes).
    """

    header: str
    get: str | Callable[[dict[str, Any]], Any]
    id: bool = False
    drop: int = 0

    def value(self, row: dict[str, Any]) -> str:
        raw = row.get(self.get) if isinstance(self.get, str) else self.get(row)
        return cell(raw)


def cell(value: Any) -> str:
    """A value as a table cell: `-` for nothing, lists comma-joined, timestamps to the second."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and len(value) >= 19 and value[10:11] == "T" and value[4:5] == "-":
        return value[:19].replace("T", " ")  # ISO timestamps, to the second
    return str(value)


def gib(value: Any) -> str:
    """Bytes as GiB with one decimal."""
    return "-" if value is None else f"{int(value) / 2**30:.1f}"


def render_table(
    rows: Sequence[dict[str, Any]], cols: Sequence[Column], width: int | None
) -> tuple[list[str], list[str]]:
    """The table's lines within `width` (None: no limit), and the headers it had to hide."""
    cells = [[c.value(row) for c in cols] for row in rows]
    natural = [max([len(c.header), *(len(r[i]) for r in cells)]) for i, c in enumerate(cols)]
    shown = list(range(len(cols)))
    hidden: list[str] = []

    def total(widths: dict[int, int]) -> int:
        return sum(widths[i] for i in shown) + GAP * (len(shown) - 1)

    widths = dict(enumerate(natural))
    if width is not None:
        for i in sorted((i for i, c in enumerate(cols) if c.drop), key=lambda i: cols[i].drop):
            if total(widths) <= width:
                break
            shown.remove(i)
            hidden.append(cols[i].header)
        # Still too wide: wrap text columns, narrowing the widest one a character at a time
        # (so that the room is shared), never below MIN_WRAP or the header.
        while total(widths) > width:
            wrappable = [i for i in shown if not cols[i].id and widths[i] > max(MIN_WRAP, len(cols[i].header))]
            if not wrappable:
                break  # only ids left to shrink: overflow rather than cut one
            widths[max(wrappable, key=lambda i: widths[i])] -= 1

    lines = [_line([cols[i].header for i in shown], [widths[i] for i in shown])]
    for row in cells:
        wrapped = [_wrap(row[i], widths[i]) if not cols[i].id else [row[i]] for i in shown]
        for n in range(max(len(w) for w in wrapped)):
            lines.append(_line([w[n] if n < len(w) else "" for w in wrapped], [widths[i] for i in shown]))
    return lines, hidden


def _wrap(text: str, width: int) -> list[str]:
    if len(text) <= width:
        return [text]
    return textwrap.wrap(text, width, break_on_hyphens=False) or [text]


def _line(values: Sequence[str], widths: Sequence[int]) -> str:
    return (" " * GAP).join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()


def table_width() -> int | None:
    """The width to fit: COLUMNS if set, the terminal's if stdout is one, else no limit."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def table(rows: Sequence[dict[str, Any]], cols: Sequence[Column], *, empty: str = "(none)") -> None:
    if not rows:
        typer.echo(empty)
        return
    lines, hidden = render_table(rows, cols, table_width())
    typer.echo("\n".join(lines))
    if hidden:
        note(f"({len(hidden)} columns hidden to fit: {', '.join(hidden)}; --json shows everything)")


def record(body: dict[str, Any]) -> None:
    """One resource, one field per line; long values wrap under themselves."""
    if not body:
        return
    key_width = max(len(k) for k in body)
    width = table_width()
    room = max(20, width - key_width - GAP) if width else None
    for key, value in body.items():
        text = cell(value)
        parts = _wrap(text, room) if room and not _unbreakable(text) else [text]
        typer.echo(f"{key.ljust(key_width)}{' ' * GAP}{parts[0]}")
        for part in parts[1:]:
            typer.echo(f"{' ' * (key_width + GAP)}{part}")


def _unbreakable(text: str) -> bool:
    return " " not in text  # an id, a path, a URL: never split


def emit(body: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    """`--json`: the body as the API gave it, on stdout; else the human view."""
    if as_json:
        typer.echo(json.dumps(body, indent=2))
    else:
        human(body)


def err_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def note(message: str) -> None:
    """A remark for the person at the terminal, on stderr (never mixed into --json)."""
    err_console().print(message, markup=False)


def fail(message: str, code: int) -> NoReturn:
    err_console().print(f"error: {message}", markup=False)
    raise typer.Exit(code)


@contextmanager
def progress(what: str) -> Iterator[Callable[[str], None]]:
    """A spinner with `what` on stderr while a long operation runs (a plain line when stderr
    is not a terminal); the callback updates the text."""
    console = err_console()
    if not console.is_terminal:
        console.print(f"{what} ...", markup=False)
        yield lambda text: None
        return
    with console.status(what) as status:
        yield lambda text: status.update(f"{what}: {text}")


def wait_for(
    fetch: Callable[[], T],
    done: Callable[[T], bool],
    *,
    what: str,
    describe: Callable[[T], str] = str,
    timeout: float = 300.0,
    interval: float = 0.5,
) -> T:
    """Poll `fetch` until `done` with progress on stderr; exit 1 when it takes too long."""
    deadline = time.monotonic() + timeout
    with progress(what) as update:
        while True:
            current = fetch()
            if done(current):
                return current
            update(describe(current))
            if time.monotonic() > deadline:
                fail(f"{what}: still {describe(current)} after {timeout:g} s", 1)
            time.sleep(interval)
