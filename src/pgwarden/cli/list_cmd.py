"""`pgwarden list`: the members of the cluster as the consensus store sees them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from pgwarden.cli.common import config_option, open_store
from pgwarden.cli.render import emit_json, output_option
from pgwarden.model import ClusterState


def cluster_rows(cluster: ClusterState) -> list[dict[str, Any]]:
    """One row per member: role, state, timeline, lag behind the leader, last decision."""
    leader = cluster.leader.name if cluster.leader else None
    rows = []
    for name in sorted(cluster.members):
        info = cluster.members[name]
        position = info.wal_position
        lag = None
        if cluster.optime is not None and position is not None:
            lag = max(0, cluster.optime - position)
        role = "leader" if name == leader else info.role.value
        rows.append(
            {
                "member": name,
                "host": f"{info.host}:{info.port}",
                "role": role,
                "state": info.state.value,
                "timeline": info.timeline,
                "lag_bytes": 0 if name == leader else lag,
                "sync": name in cluster.sync.members,
                "archive": dict(info.archive) if info.archive is not None else None,
                "decision": info.decision,
            }
        )
    return rows


def archive_text(archive: dict[str, Any] | None) -> str:
    """The primary's archiving in a few words: `ok 00000001000000000000000A`,
    `2 pending, 3.1 s behind`, `FAILING since 12:00:03, 5 pending`."""
    if not archive:
        return "-"
    pending = archive.get("pending_segments") or 0
    if archive.get("failing_since"):
        since = datetime.fromtimestamp(archive["failing_since"], UTC).strftime("%H:%M:%S")
        return f"FAILING since {since}, {pending} pending"
    if pending:
        return f"{pending} pending, {archive.get('lag_seconds') or 0:.1f} s behind"
    last = archive.get("last_archived")
    return f"ok {last}" if last else "ok"


@click.command("list")
@config_option
@output_option
def list_command(config_path: Path, output: str) -> None:
    """Show every member: role, state, timeline, lag and its last decision.

    \b
    Exit codes: 0 shown; 1 the configuration is invalid or ZooKeeper does not
    answer within a few seconds (one sentence on stderr); 2 the command line is wrong.
    """
    with open_store(config_path) as (settings, store):
        cluster = store.read()
    rows = cluster_rows(cluster)
    if output == "json":
        emit_json(
            {
                "cluster": settings.cluster,
                "leader": cluster.leader.name if cluster.leader else None,
                "paused": cluster.config.paused,
                "members": rows,
            }
        )
        return
    if cluster.config.paused:
        click.secho("MAINTENANCE MODE: the cluster is paused, no automatic failover", bold=True)
    leader = cluster.leader.name if cluster.leader else "none"
    click.echo(f"cluster {settings.cluster}, leader {leader}")
    header = ("MEMBER", "HOST", "ROLE", "STATE", "TL", "LAG", "SYNC", "ARCHIVE", "LAST DECISION")
    table = [header] + [
        (
            r["member"],
            r["host"],
            r["role"],
            r["state"],
            str(r["timeline"] or "-"),
            "-" if r["lag_bytes"] is None else str(r["lag_bytes"]),
            "yes" if r["sync"] else "",
            archive_text(r["archive"]),
            r["decision"],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())
