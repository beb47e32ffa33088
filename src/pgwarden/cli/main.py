"""Entry point: `pgwarden [--log-level L] COMMAND ...`."""

from __future__ import annotations

import importlib

import click

from pgwarden import __version__
from pgwarden.errors import PgwardenError
from pgwarden.logs import LEVELS, configure_logging

# Each command's module is imported only when that command runs (or help lists it): a
# `pgwarden backup create` or an agentless `wal-push` does not pay for kazoo, the lab or
# the HTTP API. Name -> "module:attribute".
COMMANDS = {
    "agent": "pgwarden.cli.agent_cmd:agent_command",
    "config": "pgwarden.cli.config_cmd:config_group",
    "lab": "pgwarden.cli.lab_cmd:lab_group",
    "list": "pgwarden.cli.list_cmd:list_command",
    "pause": "pgwarden.cli.pause_cmd:pause_command",
    "resume": "pgwarden.cli.pause_cmd:resume_command",
    "history": "pgwarden.cli.history_cmd:history_command",
    "events": "pgwarden.cli.history_cmd:events_command",
    "switchover": "pgwarden.cli.ha_cmd:switchover_command",
    "failover": "pgwarden.cli.ha_cmd:failover_command",
    "restart": "pgwarden.cli.member_cmd:restart_command",
    "reload": "pgwarden.cli.member_cmd:reload_command",
    "reinit": "pgwarden.cli.member_cmd:reinit_command",
    "backup": "pgwarden.cli.backup_cmd:backup_group",
    "restore": "pgwarden.cli.backup_cmd:restore_command",
    "wal-push": "pgwarden.cli.wal_cmd:wal_push_command",
    "wal-fetch": "pgwarden.cli.wal_cmd:wal_fetch_command",
    "wal-serve": "pgwarden.cli.wal_cmd:wal_serve_command",
    "check": "pgwarden.cli.wal_cmd:check_command",
    "drill": "pgwarden.cli.drill_cmd:drill_group",
}


class LazyGroup(click.Group):
    """A group whose commands are imported by name when needed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(
    cls=LazyGroup,
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
