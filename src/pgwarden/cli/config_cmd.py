"""`pgwarden config check|show FILE`: validate a configuration file, or print it in full;
`pgwarden config show|set|edit` without FILE: the cluster's dynamic configuration in the store.
"""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from pgwarden.cli.common import config_option
from pgwarden.cli.dynamic_cmd import edit_command, set_command, show_dynamic
from pgwarden.cli.render import emit_json, output_option
from pgwarden.config import Settings, effective_config, load_config
from pgwarden.errors import ConfigError

# Existence is checked by load_config, which says so in one sentence with exit code 1.
_FILE = click.Path(path_type=Path)


@click.group("config")
def config_group() -> None:
    """Validate and show a configuration file; show, set and edit the dynamic configuration.

    \b
    The dynamic configuration (ttl, loop_wait, safety_margin, maximum_lag_on_failover,
    synchronous_mode, synchronous_node_count, paused, PostgreSQL parameters) is shared
    by every member through ZooKeeper; `-c FILE` tells where ZooKeeper is.
    """


@config_group.command("check")
@click.argument("file", type=_FILE)
@output_option
def check_command(file: Path, output: str) -> None:
    """Validate FILE: print `ok`, or one `field.path: problem` line per error and exit 1."""
    _load_or_exit(file, output)
    if output == "json":
        emit_json({"valid": True, "errors": []})
    else:
        click.echo("ok")


@config_group.command("show")
@click.argument("file", type=_FILE, required=False)
@config_option
@output_option
def show_command(file: Path | None, config_path: Path, output: str) -> None:
    """Print FILE's effective configuration, or without FILE the dynamic configuration.

    \b
    With FILE: every setting of that file, defaults filled in, secrets masked.
    Without FILE: the cluster's dynamic configuration as stored in ZooKeeper (found
    through -c), secrets masked.
    Exit codes: 0 shown; 1 FILE is invalid, or ZooKeeper is unreachable (one
    sentence on stderr); 2 the command line is wrong.
    """
    if file is None:
        show_dynamic(config_path, output)
        return
    effective = effective_config(_load_or_exit(file, output))
    if output == "json":
        emit_json(effective)
        return
    click.echo(f"# effective configuration of {file}: defaults filled in, secrets masked")
    click.echo(yaml.safe_dump(effective, sort_keys=False, default_flow_style=False), nl=False)


def _load_or_exit(file: Path, output: str) -> Settings:
    """The settings in `file`; on any problem, report every one and exit 1."""
    try:
        return load_config(file)
    except ConfigError as exc:
        if output == "json":
            errors = [{"path": path or None, "message": message} for path, message in exc.problems]
            emit_json({"valid": False, "errors": errors})
        else:
            for line in exc.lines():
                click.echo(line, err=True)
        raise SystemExit(exc.exit_code) from None


config_group.add_command(set_command)
config_group.add_command(edit_command)
