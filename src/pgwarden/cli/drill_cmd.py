"""`pgwarden drill run | list | show`: restore drills and their reports."""

from __future__ import annotations

import json
import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from pgwarden.cli.backup_cmd import (
    check_archive_for,
    recovery_target,
    restore_owner,
    target_options,
)
from pgwarden.cli.common import config_option
from pgwarden.cli.render import emit_json, fail, output_option, table
from pgwarden.config import load_config

if TYPE_CHECKING:
    from pgwarden.drill.runner import Drill

_EXIT_CODES = """\b
Exit codes: 0 the drill passed (or the listing was shown); 1 it failed, or the
input is invalid (one sentence on stderr); 2 the command line is wrong."""


@click.group("drill")
def drill_group() -> None:
    """Restore drills: prove that backups restore, and how long it takes."""


@drill_group.command("run", epilog=_EXIT_CODES)
@config_option
@click.option(
    "--backup",
    "selector",
    default="latest",
    show_default=True,
    help="A backup id, `latest` or `random`.",
)
@target_options
@click.option(
    "--scratch-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the scratch instance lives (default: drill.scratch_dir, else the system's "
    "temp directory).",
)
@click.option(
    "--max-duration",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop the drill after this many seconds and report it failed "
    "(default: drill.max_duration).",
)
@output_option
def run_command(config_path: Path, selector: str, scratch_dir: Path | None,
                max_duration: float | None, output: str, **targets: Any) -> None:  # fmt: skip
    """Restore a backup into a scratch instance, recover it, check it, and report.

    The instance listens on a free loopback port, never archives, and is removed
    afterwards. The report (restore, replay and total time, recovered position, RPO,
    every check) is stored in the backup storage as drills/<id>.json. Too little free
    space in the scratch directory, the time limit or SIGTERM fail the drill with the
    reason (and still store the report).
    """
    from pgwarden.agent.main import instance_spec  # noqa: PLC0415
    from pgwarden.backup.context import BackupContext  # noqa: PLC0415
    from pgwarden.backup.targets import check_backup_reaches, choose_backup  # noqa: PLC0415
    from pgwarden.drill.runner import Drill  # noqa: PLC0415

    settings = load_config(config_path)
    context = BackupContext.from_settings(settings)
    target = recovery_target(**targets)
    catalog = context.catalog
    if selector == "random":
        complete = catalog.scan().complete
        if not complete:
            fail(f"there is no complete backup of cluster {settings.cluster} to drill")
        manifest = catalog.load(random.choice(complete))  # noqa: S311 - not cryptography
        check_backup_reaches(manifest, target)
    elif selector == "latest" and target.kind is not None:
        manifest = choose_backup(catalog.manifests(), target)
    else:
        manifest = catalog.resolve(selector)
        check_backup_reaches(manifest, target)
    check_archive_for(context, manifest, target)
    drill = Drill(
        instance_spec(settings), context, manifest, target, config_path,
        settings.drill.checks, restore_owner(settings), scratch_dir or settings.drill.scratch_dir,
        amcheck_depth=settings.drill.amcheck_depth,
    )  # fmt: skip
    limit = max_duration if max_duration is not None else settings.drill.max_duration
    with _stoppable(drill, limit) as aborted:
        report = drill.run().to_json()
    if aborted:
        # Stopped from outside (the agent or host shutting down): says nothing about the
        # backups, so no report is stored to count as the newest drill.
        fail(f"the drill was aborted by {aborted[0]}; no report stored")
    key = f"{context.layout.drills_prefix}{report['id']}.json"
    context.store.put(key, json.dumps(report, indent=2).encode())
    if output == "json":
        emit_json(report)
    else:
        _summary(report)
    if not report["ok"]:
        raise SystemExit(1)


@contextmanager
def _stoppable(drill: Drill, limit: float) -> Iterator[list[str]]:
    """Stop the drill (its cleanup still runs) at its time limit or on SIGTERM; yields a
    list that holds the signal's name once SIGTERM aborted the drill."""

    from pgwarden.drill.plan import time_verdict  # noqa: PLC0415
    from pgwarden.drill.runner import DrillStoppedError  # noqa: PLC0415

    aborted: list[str] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        if drill.finishing:
            return  # cleanup runs; interrupting it would leave the scratch instance behind
        if signum == signal.SIGALRM:
            raise DrillStoppedError(time_verdict(limit, limit).reason)
        aborted.append(signal.Signals(signum).name)
        raise DrillStoppedError(f"the drill was stopped by {aborted[0]}")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGALRM, signal.SIGTERM)}
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield aborted
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _summary(report: dict[str, Any]) -> None:
    state = "PASSED" if report["ok"] else "FAILED"
    click.echo(f"drill {report['id']} of backup {report['backup']}: {state}")
    if report["error"]:
        click.echo(f"  error: {report['error']}")
    click.echo(
        f"  restore {report['restore_s']} s, replay {report['replay_s']} s, "
        f"RTO {report['rto_s']} s; RPO {report['rpo_s']} s"
    )
    click.echo(f"  recovered to {report['recovered_lsn']} ({report['recovered_commit_time']})")
    for check in report["checks"]:
        click.echo(f"  {'ok  ' if check['ok'] else 'FAIL'} {check['name']}: {check['detail']}")


def _reports(config_path: Path) -> list[dict[str, Any]]:
    from pgwarden.backup.context import BackupContext  # noqa: PLC0415

    context = BackupContext.from_settings(load_config(config_path))
    found = []
    for info in context.store.list(context.layout.drills_prefix):
        found.append(json.loads(context.store.get(info.key)))
    return sorted(found, key=lambda r: r["id"])


@drill_group.command("list", epilog=_EXIT_CODES)
@config_option
@output_option
def list_command(config_path: Path, output: str) -> None:
    """List drill reports, oldest first."""
    reports = _reports(config_path)
    if output == "json":
        emit_json(reports)
        return
    if not reports:
        click.echo("no drills recorded")
        return
    now = datetime.now(UTC)
    table(
        ("ID", "BACKUP", "RESULT", "AGE", "RTO", "RPO", "CHECKS"),
        [
            (r["id"], r["backup"], "passed" if r["ok"] else "FAILED", _age(r, now),
             f"{r['rto_s']} s", f"{r['rpo_s']} s",
             f"{r['checks_passed']} ok, {r['checks_failed']} failed")
            for r in reports
        ],
    )  # fmt: skip
    latest = reports[-1]
    if not latest["ok"]:
        click.echo(f"the latest drill FAILED: {latest['error'] or _failed_checks(latest)}")


def _age(report: dict[str, Any], now: datetime) -> str:
    """How long ago the drill finished: 45 s, 12 min, 5 h, 3 d."""
    try:
        seconds = (now - datetime.fromisoformat(report["finished_at"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"


def _failed_checks(report: dict[str, Any]) -> str:
    from pgwarden.drill.plan import failed_checks_sentence  # noqa: PLC0415

    return failed_checks_sentence(c for c in report["checks"] if not c["ok"])


@drill_group.command("show", epilog=_EXIT_CODES)
@config_option
@click.argument("drill")
@output_option
def show_command(config_path: Path, drill: str, output: str) -> None:
    """Show one drill report (an id or `latest`)."""
    reports = _reports(config_path)
    chosen = reports[-1:] if drill == "latest" else [r for r in reports if r["id"] == drill]
    if not chosen:
        fail(f"there is no drill report {drill}")
    if output == "json":
        emit_json(chosen[0])
    else:
        _summary(chosen[0])
