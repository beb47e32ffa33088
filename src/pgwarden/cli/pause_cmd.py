"""`pgwarden pause|resume`: maintenance mode, the `paused` flag of the dynamic configuration."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from pgwarden.cli.common import config_option, open_store
from pgwarden.cli.dynamic_cmd import update_config
from pgwarden.cli.render import emit_json, output_option

_EXIT_CODES = """\b
Exit codes: 0 done, also when the cluster already was in that mode; 1 failed,
with the reason on stderr (ZooKeeper unreachable, cluster not bootstrapped,
other writers kept changing the configuration); 2 the command line is wrong."""


@click.command("pause", epilog=_EXIT_CODES)
@config_option
@output_option
def pause_command(config_path: Path, output: str) -> None:
    """Put the cluster in maintenance mode: no automatic failover until `resume`.

    Agents keep running PostgreSQL and reporting; nobody is promoted when the
    leader goes away, and a primary is not fenced when its lease runs out.
    `pgwarden list` shows the pause at the top.
    """
    _set_paused(config_path, output, paused=True)


@click.command("resume", epilog=_EXIT_CODES)
@config_option
@output_option
def resume_command(config_path: Path, output: str) -> None:
    """Leave maintenance mode: automatic failover is on again."""
    _set_paused(config_path, output, paused=False)


def _set_paused(config_path: Path, output: str, *, paused: bool) -> None:
    doing = "pausing" if paused else "resuming"
    with open_store(config_path) as (settings, store):
        update = update_config(store, lambda config: replace(config, paused=paused), doing)
    if output == "json":
        emit_json({"cluster": settings.cluster, "paused": paused, "changed": update.written})
    elif paused and update.written:
        click.echo(
            f"the cluster {settings.cluster} is paused: no automatic failover until "
            "`pgwarden resume`"
        )
    elif paused:
        click.echo("the cluster is already paused")
    elif update.written:
        click.echo(f"the cluster {settings.cluster} is resumed: automatic failover is on again")
    else:
        click.echo("the cluster is not paused")
