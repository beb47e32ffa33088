"""Entry point: `pgwarden [--log-level L] COMMAND ...`."""

from __future__ import annotations

import click

from pgwarden import __version__
from pgwarden.cli.agent_cmd import agent_command
from pgwarden.cli.backup_cmd import backup_group, restore_command
from pgwarden.cli.config_cmd import config_group
from pgwarden.cli.ha_cmd import failover_command, switchover_command
from pgwarden.cli.history_cmd import events_command, history_command
from pgwarden.cli.lab_cmd import lab_group
from pgwarden.cli.list_cmd import list_command
from pgwarden.cli.member_cmd import reinit_command, reload_command, restart_command
from pgwarden.cli.pause_cmd import pause_command, resume_command
from pgwarden.cli.wal_cmd import check_command, wal_fetch_command, wal_push_command
from pgwarden.errors import PgwardenError
from pgwarden.logs import LEVELS, configure_logging


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "-V", "--version", prog_name="pgwarden")
@click.option(
    "--log-level",
    type=click.Choice(LEVELS),
    default="warning",
    show_default="warning; info for the agent",
    help="Lowest level of log events written to stderr.",
)
@click.pass_context
def cli(ctx: click.Context, log_level: str) -> None:
    """pgwarden: high availability and disaster recovery for PostgreSQL.

    \b
    Exit codes: 0 success; 1 the operation failed or the input is invalid
    (one sentence on stderr says why); 2 the command line itself is wrong.
    """
    explicit = ctx.get_parameter_source("log_level") is not click.core.ParameterSource.DEFAULT
    if ctx.invoked_subcommand == "agent" and not explicit:
        log_level = "info"
    configure_logging(log_level)


cli.add_command(agent_command)
cli.add_command(config_group)
cli.add_command(lab_group)
cli.add_command(list_command)
cli.add_command(pause_command)
cli.add_command(resume_command)
cli.add_command(history_command)
cli.add_command(events_command)
cli.add_command(switchover_command)
cli.add_command(failover_command)
cli.add_command(restart_command)
cli.add_command(reload_command)
cli.add_command(reinit_command)
cli.add_command(backup_group)
cli.add_command(restore_command)
cli.add_command(wal_push_command)
cli.add_command(wal_fetch_command)
cli.add_command(check_command)


def main() -> None:
    """Run the CLI, turning pgwarden errors into one line on stderr and exit code 1."""
    try:
        cli.main(prog_name="pgwarden", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        raise SystemExit(130) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except PgwardenError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(exc.exit_code) from None
