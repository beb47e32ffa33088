"""`pgwarden agent -c FILE`: run the agent in the foreground (systemd starts it so)."""

from __future__ import annotations

from pathlib import Path

import click

from pgwarden.cli.common import config_option
from pgwarden.config import load_config


@click.command("agent")
@config_option
def agent_command(config_path: Path) -> None:
    """Run the HA agent for this host until SIGTERM.

    \b
    It starts and supervises PostgreSQL, holds or follows the leader lease in
    ZooKeeper, fences itself when it cannot confirm the lease, and serves the HTTP
    API. On SIGTERM it stops PostgreSQL and hands the lease over.
    Exit codes: 0 stopped cleanly; 1 invalid configuration or a fatal error.
    """
    from pgwarden.agent.main import Agent  # noqa: PLC0415 - keep other commands light

    settings = load_config(config_path)
    raise SystemExit(Agent(settings, config_path).run())
