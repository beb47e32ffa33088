"""Options and helpers shared by commands that read the configuration file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CONFIG = "/etc/pgwarden/pgwarden.yml"


def config_option(func: F) -> F:
    """Add `-c/--config FILE` (default $PGWARDEN_CONFIG or /etc/pgwarden/pgwarden.yml)."""
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=lambda: os.environ.get("PGWARDEN_CONFIG", DEFAULT_CONFIG),
        show_default="$PGWARDEN_CONFIG or " + DEFAULT_CONFIG,
        help="The pgwarden configuration file.",
    )(func)
