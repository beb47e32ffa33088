"""Options and helpers shared by commands that read the configuration file."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pgwarden.config import Settings, load_config

if TYPE_CHECKING:
    from pgwarden.dcs.zookeeper import ZooKeeperStore

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CONFIG = "/etc/pgwarden/pgwarden.yml"
# How long a command waits for a ZooKeeper session before it gives up with one sentence.
STORE_CONNECT_TIMEOUT = 5.0


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


@contextmanager
def open_store(config_path: Path) -> Iterator[tuple[Settings, ZooKeeperStore]]:
    """The settings in `config_path` and a started store for its cluster, stopped on exit.

    Raises ConfigError for an invalid file and StoreError when ZooKeeper does not answer
    within STORE_CONNECT_TIMEOUT; `pgwarden.cli.main` prints either as one sentence.
    """
    from pgwarden.dcs.zookeeper import ZooKeeperStore  # noqa: PLC0415 - kazoo is heavy

    settings = load_config(config_path)
    store = ZooKeeperStore(",".join(settings.dcs.hosts), settings.cluster, root=settings.dcs.root)
    store.start(timeout=STORE_CONNECT_TIMEOUT)
    try:
        yield settings, store
    finally:
        store.stop()
