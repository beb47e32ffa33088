"""Output helpers shared by every command: `-o text|json` and one-sentence errors."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def output_option(func: F) -> F:
    """Add `-o/--output text|json` to a command."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Output format; json is stable for scripts.",
    )(func)


def emit_json(value: Any) -> None:
    """Print a value as indented JSON on stdout."""
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def fail(message: str, code: int = 1) -> None:
    """Print `error: <message>` on stderr and exit with `code`."""
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """Left-aligned columns; the last one (free text) is not padded."""
    lines = [header, *rows]
    widths = [max(len(row[i]) for row in lines) for i in range(len(header) - 1)]
    for row in lines:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())
