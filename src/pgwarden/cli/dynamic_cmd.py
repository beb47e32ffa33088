"""`pgwarden config show|set|edit` on the store's dynamic configuration, compare-and-set.

Every change is read -> modify -> compare-and-set on the `config` key's version, so two
operators never overwrite each other: `set` (and `pause`/`resume`) re-apply their change to
the fresh configuration when they lose the race, `edit` refuses, as its human made the
change looking at values that are gone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click
import yaml

from pgwarden.cli.common import config_option, open_store
from pgwarden.cli.render import emit_json, output_option
from pgwarden.dynamic_config import (
    Assignment,
    Change,
    apply_assignments,
    changes,
    from_yaml,
    masked,
    parse_assignment,
    to_yaml,
)
from pgwarden.errors import ConfigError, PgwardenError
from pgwarden.model import DynamicConfig

if TYPE_CHECKING:
    from pgwarden.dcs.znodes import TreeStore

# Compare-and-set attempts before giving up when other writers keep winning.
CAS_ATTEMPTS = 5
_CAS_BACKOFF = 0.05  # seconds, times the attempt number

_EXIT_CODES = """\b
Exit codes: 0 done (also when nothing needed to change); 1 refused or failed, with
the reason on stderr (invalid values, a concurrent change, ZooKeeper unreachable,
cluster not bootstrapped); 2 the command line is wrong."""

_EDIT_HELP = """\
Dynamic configuration of cluster {cluster} ({path}).
Saving validates it and writes it back, unless someone changed it in the
meantime. Quit without saving, or save it unchanged, to leave it as it is.
A key left out takes its default. ttl, loop_wait, safety_margin: seconds;
maximum_lag_on_failover: bytes; synchronous_mode: off, on or strict;
paused: true stops automatic failover; parameters: PostgreSQL settings for
every member, such as work_mem: 64MB.
"""


@dataclass(frozen=True)
class ConfigUpdate:
    """What a read-modify-write of the `config` key did."""

    cluster: str
    before: DynamicConfig
    after: DynamicConfig
    written: bool

    @property
    def changes(self) -> list[Change]:
        return changes(self.before, self.after)

    def to_json(self) -> dict[str, object]:
        return {
            "cluster": self.cluster,
            "written": self.written,
            "changes": [change.to_json() for change in self.changes],
            "config": masked(self.after),
        }


def read_config(store: TreeStore) -> tuple[DynamicConfig, int]:
    """The stored configuration and its version; refused when the key does not exist.

    Writing a first configuration from the CLI would preempt the bootstrap's (built from
    the agents' files) and, with a mistyped cluster name, pause a cluster nobody runs.
    """
    cluster = store.read()
    if cluster.config_version == -1:
        raise PgwardenError(
            f"cluster {store.cluster!r} has no dynamic configuration at {store.keys.config}: "
            "it is not bootstrapped yet, or the configuration file names another cluster "
            "or dcs.root; nothing was written"
        )
    return cluster.config, cluster.config_version


def update_config(
    store: TreeStore, change: Callable[[DynamicConfig], DynamicConfig], doing: str
) -> ConfigUpdate:
    """Apply `change` to the stored configuration with compare-and-set, retrying on races.

    `change` may raise ConfigError; it is called again on the fresh configuration after
    every lost race. `doing` completes "... changed while <doing>" in the failure sentence.
    """
    for attempt in range(1, CAS_ATTEMPTS + 1):
        before, version = read_config(store)
        after = change(before)
        if after == before:
            return ConfigUpdate(store.cluster, before, after, written=False)
        if store.set_config(after, version):
            return ConfigUpdate(store.cluster, before, after, written=True)
        time.sleep(_CAS_BACKOFF * attempt)
    raise PgwardenError(
        f"the dynamic configuration changed {CAS_ATTEMPTS} times while {doing}, each time "
        "before it could be written; nothing was written, try again"
    )


def show_dynamic(config_path: Path, output: str) -> None:
    """Print the store's dynamic configuration (`config show` without FILE)."""
    with open_store(config_path) as (settings, store):
        cluster = store.read()
    data = masked(cluster.config)
    if output == "json":
        emit_json(data)
        return
    if cluster.config_version == -1:
        click.echo(
            f"# cluster {settings.cluster} has no dynamic configuration in ZooKeeper yet "
            "(not bootstrapped): these are the defaults"
        )
    else:
        click.echo(f"# dynamic configuration of cluster {settings.cluster}, secrets masked")
    click.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), nl=False)


def _parse_assignments(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> list[Assignment]:
    try:
        return [parse_assignment(value) for value in values]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("set", epilog=_EXIT_CODES)
@click.argument(
    "assignments", nargs=-1, required=True, metavar="KEY=VALUE...", callback=_parse_assignments
)
@config_option
@output_option
def set_command(assignments: list[Assignment], config_path: Path, output: str) -> None:
    """Change settings of the dynamic configuration in the store.

    \b
    Keys: ttl, loop_wait, safety_margin (seconds), maximum_lag_on_failover
    (bytes), synchronous_mode (off, on, strict), synchronous_node_count, paused,
    and parameters.NAME for a PostgreSQL setting of every member.
    Values: true/false, numbers, or text ('5' in quotes is text); KEY=null
    restores the default or removes the parameter.
    Every value is validated, together with the rest of the configuration,
    before anything is written; when another writer wins the race, the changes
    are applied again to its configuration.
    """
    with open_store(config_path) as (_settings, store):
        try:
            update = update_config(
                store, lambda config: apply_assignments(config, assignments), "setting it"
            )
        except ConfigError as exc:
            _refuse_invalid(exc, output)
    _report(update, output, "no change: the configuration already has these values")


@click.command("edit", epilog=_EXIT_CODES)
@config_option
@output_option
def edit_command(config_path: Path, output: str) -> None:
    """Edit the dynamic configuration in $VISUAL or $EDITOR, as YAML.

    \b
    On save it is validated (nothing is written when a value is wrong: every
    problem is listed) and written only if nobody changed the configuration
    while the editor was open; otherwise nothing is written, edit it again.
    """
    # No session is held while a human edits: read, close, edit, then compare-and-set
    # against the version that was read.
    with open_store(config_path) as (settings, store):
        before, version = read_config(store)
        path = store.keys.config
    text = to_yaml(before, _EDIT_HELP.format(cluster=settings.cluster, path=path))
    try:
        edited = click.edit(text, extension=".yml")
    except click.ClickException as exc:
        raise PgwardenError(f"{exc.message}; nothing was written") from None
    unchanged = ConfigUpdate(settings.cluster, before, before, written=False)
    if edited is None or edited == text:
        _report(unchanged, output, "no change")
        return
    try:
        after = from_yaml(edited)
    except ConfigError as exc:
        _refuse_invalid(exc, output)
    if after == before:
        _report(unchanged, output, "no change")
        return
    with open_store(config_path) as (_settings, store):
        written = store.set_config(after, version)
    if not written:
        raise PgwardenError(
            "the configuration changed while you edited it; nothing was written "
            "(run `pgwarden config edit` again to start from the current values)"
        )
    _report(ConfigUpdate(settings.cluster, before, after, written=True), output, "no change")


def _report(update: ConfigUpdate, output: str, unchanged: str) -> None:
    if output == "json":
        emit_json(update.to_json())
        return
    if not update.written:
        click.echo(unchanged)
        return
    for change in update.changes:
        click.echo(str(change))
    click.echo(f"dynamic configuration of cluster {update.cluster} written")


def _refuse_invalid(exc: ConfigError, output: str) -> NoReturn:
    """Every problem, `field: sentence` per line (or JSON), then exit 1."""
    if output == "json":
        errors = [{"path": path or None, "message": message} for path, message in exc.problems]
        emit_json({"written": False, "errors": errors})
    else:
        for line in exc.lines():
            click.echo(line, err=True)
        click.echo("error: the dynamic configuration is not valid; nothing was written", err=True)
    raise SystemExit(1)
