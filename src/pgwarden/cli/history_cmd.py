"""`pgwarden history` (timeline switches) and `pgwarden events` (typed events), newest last."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from pgwarden.cli.common import config_option, open_store
from pgwarden.cli.render import emit_json, output_option, table
from pgwarden.model import HistoryEntry

_EXIT_CODES = """\b
Exit codes: 0 shown (also when there is nothing to show); 1 failed, with the
reason on stderr (invalid configuration file, ZooKeeper unreachable); 2 the
command line is wrong."""

# Event data keys naming the member an event is about, in order of preference.
_MEMBER_KEYS = ("member", "new_leader", "to")


@click.command("history", epilog=_EXIT_CODES)
@config_option
@output_option
def history_command(config_path: Path, output: str) -> None:
    """Show every timeline switch: timeline, WAL position, time, leaders, reason.

    Oldest first, so the latest switch is the last line. Times are UTC.
    """
    with open_store(config_path) as (settings, store):
        history = store.read().history
    if output == "json":
        emit_json([{**entry.to_json(), "at": _iso(entry.time)} for entry in history])
        return
    if not history:
        click.echo(f"no timeline switches recorded for cluster {settings.cluster}")
        return
    table(("TL", "LSN", "TIME (UTC)", "OLD LEADER", "NEW LEADER", "REASON"), _history_rows(history))


def _history_rows(history: Sequence[HistoryEntry]) -> list[tuple[str, ...]]:
    return [
        (
            str(entry.timeline),
            str(entry.lsn),
            _when(entry.time),
            entry.old_leader or "-",
            entry.new_leader,
            entry.reason,
        )
        for entry in history
    ]


@click.command("events", epilog=_EXIT_CODES)
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    metavar="KIND",
    help="Only events of this kind (failover, switchover, fence, backup, ...); repeatable.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Only the newest N events (after --kind).  [default: all stored]",
)
@config_option
@output_option
def events_command(
    kinds: tuple[str, ...], limit: int | None, config_path: Path, output: str
) -> None:
    """Show the cluster's recorded events: time, kind, member and details.

    Oldest first, so the latest event is the last line. Times are UTC. The store
    keeps the most recent events only (a few hundred).
    """
    with open_store(config_path) as (settings, store):
        events = store.events()
    if kinds:
        events = [event for event in events if event["kind"] in kinds]
    if limit is not None:
        events = events[-limit:]
    if output == "json":
        emit_json([{**event, "at": _iso(event["time"])} for event in events])
        return
    if not events:
        which = f" of kind {', '.join(kinds)}" if kinds else ""
        click.echo(f"no events{which} recorded for cluster {settings.cluster}")
        return
    rows = [
        (_when(event["time"]), event["kind"], *_member_and_details(event["data"]))
        for event in events
    ]
    table(("TIME (UTC)", "KIND", "MEMBER", "DETAILS"), rows)


def _member_and_details(data: Mapping[str, Any]) -> tuple[str, str]:
    """The member an event is about, and the rest: its reason first, then `key=value`s."""
    member_key = next((key for key in _MEMBER_KEYS if data.get(key)), None)
    member = str(data[member_key]) if member_key else "-"
    parts = [str(data["reason"])] if data.get("reason") else []
    parts += [
        f"{key}={_text(value)}"
        for key, value in data.items()
        if key not in (member_key, "reason") and value is not None
    ]
    return member, " ".join(parts)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _when(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _iso(seconds: Any) -> str | None:
    if not isinstance(seconds, int | float):
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
