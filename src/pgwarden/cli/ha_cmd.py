"""`pgwarden switchover` and `pgwarden failover`: move the primary, safely or on purpose."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import click

from pgwarden.cli.common import config_option, open_store
from pgwarden.cli.render import emit_json, output_option
from pgwarden.control import MemberNow, Plan, Refused, plan_failover, plan_switchover
from pgwarden.model import ClusterState
from pgwarden.peers import configure_tls, members_now

WAIT_TIMEOUT = 30.0


def _parse_at(text: str | None) -> float:
    if text is None:
        return time.time()
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise Refused(f"--at {text!r} is not an ISO 8601 time like 2026-11-24T03:00:00Z") from None
    if moment.tzinfo is None:
        raise Refused(f"--at {text!r} has no time zone; add Z or an offset like +01:00")
    epoch = moment.timestamp()
    if epoch < time.time() - 1:
        raise Refused(f"--at {text} is in the past")
    return epoch


def _execute(
    config_path: Path, kind: str, build: Any, dry_run: bool, wait: bool, output: str
) -> None:
    with open_store(config_path) as (settings, store):
        configure_tls(settings.api.tls_ca_file)
        cluster = store.read()
        plan: Plan = build(cluster, members_now(cluster))
        if dry_run:
            _show(plan, "dry run: nothing was written", output)
            return
        if not store.set_failover(plan.request, -1):
            pending = store.read().failover
            who = pending.to if pending else "another member"
            raise Refused(
                f"another {kind} (to {who}) was requested at the same moment; not written"
            )
        if plan.request.at is not None and plan.request.at > time.time() + 1:
            when = datetime.datetime.fromtimestamp(plan.request.at, tz=datetime.UTC)
            _show(plan, f"scheduled for {when.isoformat()}", output)
            return
        if not wait:
            _show(plan, "requested", output)
            return
        started = time.monotonic()
        deadline = started + WAIT_TIMEOUT
        while time.monotonic() < deadline:
            current = store.read()
            leader = current.leader.name if current.leader else None
            if leader == plan.candidate and current.members.get(leader) is not None:
                took = time.monotonic() - started
                _show(plan, f"{plan.candidate} is the primary now ({took:.1f} s)", output)
                return
            if current.failover is None and leader != plan.candidate:
                raise Refused(
                    f"the {kind} did not happen: the leader cleared the request; "
                    f"`pgwarden events` says why"
                )
            time.sleep(0.05)
        # Withdraw our request so it cannot fire later or block the next one.
        pending = store.read().failover
        if pending is not None and pending.to == plan.candidate and not pending.handed_over:
            store.clear_failover(pending.version)
        raise Refused(
            f"{plan.candidate} did not become the primary within {WAIT_TIMEOUT:g} s; "
            "the request was withdrawn"
        )


def _show(plan: Plan, outcome: str, output: str) -> None:
    if output == "json":
        emit_json(plan.to_json() | {"outcome": outcome})
        return
    click.echo(f"{plan.kind} from {plan.leader or 'no leader'} to {plan.candidate} ({plan.why})")
    if plan.kind == "failover":
        click.echo(f"expected data loss: {plan.data_loss_bytes} bytes of WAL")
    click.echo(outcome)


@click.command("switchover")
@config_option
@click.option("--to", "to", metavar="MEMBER", help="The replica to promote (default: the best).")
@click.option("--at", "at", metavar="TIME", help="When, as ISO 8601 with a zone (default: now).")
@click.option("--force", is_flag=True, help="Hand over to a lagging replica after it catches up.")
@click.option("--dry-run", is_flag=True, help="Show the candidate and why; write nothing.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the new primary.")
@output_option
def switchover_command(
    config_path: Path,
    to: str | None,
    at: str | None,
    force: bool,
    dry_run: bool,
    wait: bool,
    output: str,
) -> None:
    """Move the primary role to a healthy replica without losing a commit.

    \b
    The primary checkpoints, shuts down cleanly, waits until the candidate has
    received all of its WAL, and hands the lease over; it rejoins as a replica
    without a rewind. Refused: no healthy primary, a candidate that is not a
    running replica, has the nofailover tag, or lags beyond
    maximum_lag_on_failover (unless --force), or another request pending.
    Exit codes: 0 done (or scheduled); 1 refused or failed, one sentence on
    stderr says why; 2 usage error.
    """
    moment = _parse_at(at)

    def build(cluster: ClusterState, now: dict[str, MemberNow]) -> Plan:
        return plan_switchover(cluster, now, to=to, at=moment, force=force)

    _execute(config_path, "switchover", build, dry_run, wait, output)


@click.command("failover")
@config_option
@click.option("--to", "to", metavar="MEMBER", required=True, help="The replica to promote.")
@click.option("--allow-data-loss", is_flag=True, help="Promote even if it lacks WAL.")
@click.option("--force", is_flag=True, help="Fail over even though the primary is healthy.")
@click.option(
    "--dry-run", is_flag=True, help="Show the candidate and the data loss; write nothing."
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the new primary.")
@output_option
def failover_command(
    config_path: Path,
    to: str,
    allow_data_loss: bool,
    force: bool,
    dry_run: bool,
    wait: bool,
    output: str,
) -> None:
    """Promote MEMBER when the primary is gone or unhealthy.

    \b
    Refused: a healthy primary (use switchover, or --force), a candidate that
    is not a running replica or has the nofailover tag, and a candidate that
    would lose data (it says how many bytes and the time of its last commit)
    unless --allow-data-loss.
    Exit codes: 0 done; 1 refused or failed, one sentence on stderr says why;
    2 usage error.
    """

    def build(cluster: ClusterState, now: dict[str, MemberNow]) -> Plan:
        return plan_failover(
            cluster, now, to=to, at=time.time(), allow_data_loss=allow_data_loss, force=force
        )

    _execute(config_path, "failover", build, dry_run, wait, output)
