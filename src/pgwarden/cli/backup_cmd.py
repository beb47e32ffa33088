"""`pgwarden backup create|list|show|verify|delete|expire` and `pgwarden restore`."""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from pgwarden.backup.context import BackupContext
from pgwarden.backup.manifest import Manifest
from pgwarden.backup.targets import RecoveryTarget, TargetKind, check_target
from pgwarden.backup.upload import Counters
from pgwarden.cli.common import config_option
from pgwarden.cli.render import emit_json, fail, output_option, table
from pgwarden.config import Settings, load_config
from pgwarden.invocation import pgwarden_command

_EXIT_CODES = """\b
Exit codes: 0 done; 1 failed (the reason on stderr in one sentence, naming the
object or file concerned); 2 the command line is wrong."""


def _context(config_path: Path) -> tuple[Settings, BackupContext]:
    settings = load_config(config_path)
    return settings, BackupContext.from_settings(settings)


@contextmanager
def _progress(label: str, output: str) -> Iterator[Callable[[Counters, int], None] | None]:
    """A progress bar on a terminal; nothing otherwise (the log events say it all)."""
    if output != "text" or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=1, label=label, file=sys.stderr, show_pos=False) as bar:

        def update(counters: Counters, total: int) -> None:
            bar.length = max(total, 1)
            bar.update(min(counters.read_bytes, bar.length) - bar.pos)

        yield update


def _mb(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


@click.group("backup")
def backup_group() -> None:
    """Base backups in the configured storage."""


@backup_group.command("create", epilog=_EXIT_CODES)
@config_option
@click.option(
    "--type",
    "kind",
    type=click.Choice(["full", "incr"]),
    default="full",
    show_default=True,
    help="incr stores only files changed since the latest backup (full if none).",
)
@click.option(
    "--from-standby",
    is_flag=True,
    help="Back up this host's standby instead of requiring the primary.",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Files read, compressed and uploaded in parallel.",
)
@click.option("--no-expire", is_flag=True, help="Do not apply the retention policy afterwards.")
@output_option
def create_command(
    config_path: Path, kind: str, from_standby: bool, jobs: int, no_expire: bool, output: str
) -> None:  # fmt: skip
    """Take a base backup of the local instance and store it.

    The manifest is written last, after the WAL the backup needs is archived: until then
    the backup is not listed and cannot be restored. Retention runs afterwards.
    """
    from pgwarden.agent.main import instance_spec  # noqa: PLC0415
    from pgwarden.backup.create import BackupRequest, BackupRun  # noqa: PLC0415

    settings, context = _context(config_path)
    request = BackupRequest(kind=kind, from_standby=from_standby, jobs=jobs)  # type: ignore[arg-type]
    with _progress("backup", output) as progress:
        run = BackupRun(
            cluster=settings.cluster,
            spec=instance_spec(settings),
            catalog=context.catalog,
            encoding=context.encoding,
            request=request,
            progress=progress,
            wal=context.wal,
        )
        manifest = run.run()
    expired: tuple[str, ...] = ()
    if not no_expire:
        expired = _expire(settings, context, dry_run=False).backups_deleted
    summary = manifest.summary() | {
        "stored_bytes": run.counters.stored_bytes,
        "reused_bytes": run.counters.reused_bytes,
        "expired": list(expired),
    }
    if output == "json":
        emit_json(summary)
        return
    click.echo(
        f"backup {manifest.id} ({manifest.kind}) complete: {_mb(manifest.db_bytes)} in "
        f"{summary['duration_s']} s, {_mb(run.counters.stored_bytes)} stored"
        + (f", {_mb(run.counters.reused_bytes)} reused" if run.counters.reused_bytes else "")
    )
    _warn_bad_pages(manifest)
    for ident in expired:
        click.echo(f"expired backup {ident}")


def _warn_bad_pages(manifest: Manifest) -> None:
    for path, blocks in manifest.bad_pages.items():
        shown = ", ".join(str(b) for b in blocks[:10]) + (" ..." if len(blocks) > 10 else "")
        click.echo(f"warning: {path}: page checksum failed in block(s) {shown}", err=True)


def _expire(settings: Settings, context: BackupContext, *, dry_run: bool) -> Any:
    from pgwarden.backup.expire import expire  # noqa: PLC0415
    from pgwarden.backup.retention import Policy  # noqa: PLC0415

    retention = settings.backup.retention
    policy = Policy(retention.full_count, retention.window_days)
    return expire(context.catalog, policy, datetime.now(UTC), dry_run=dry_run)


@backup_group.command("list", epilog=_EXIT_CODES)
@config_option
@click.option("--all", "show_all", is_flag=True, help="Also list incomplete backups.")
@output_option
def list_command(config_path: Path, show_all: bool, output: str) -> None:
    """List complete backups, oldest first."""
    _, context = _context(config_path)
    catalog = context.catalog
    scanned = catalog.scan()
    manifests = catalog.manifests(scanned.complete)
    incomplete = scanned.incomplete if show_all else ()
    if output == "json":
        emit_json(
            [m.summary() for m in manifests]
            + [{"id": ident, "incomplete": True} for ident in incomplete]
        )
        return
    if not manifests and not incomplete:
        click.echo(f"no backups of cluster {context.layout.cluster}")
        return
    rows: list[tuple[str, ...]] = [
        (
            m.id, m.kind, m.stop_time.strftime("%Y-%m-%d %H:%M:%S"), m.member, str(m.timeline),
            _mb(m.db_bytes), f"{m.start_wal}..{m.stop_wal}",
        )
        for m in manifests
    ]  # fmt: skip
    rows += [(ident, "-", "-", "-", "-", "-", "incomplete: not restorable") for ident in incomplete]
    table(("ID", "KIND", "STOPPED (UTC)", "MEMBER", "TL", "SIZE", "WAL"), rows)


@backup_group.command("show", epilog=_EXIT_CODES)
@config_option
@click.argument("backup")
@output_option
def show_command(config_path: Path, backup: str, output: str) -> None:
    """Show one backup (an id or `latest`): its WAL range, label, files and references."""
    _, context = _context(config_path)
    manifest = context.catalog.resolve(backup)
    summary = manifest.summary() | {
        "system_identifier": manifest.system_identifier,
        "pg_version": manifest.pg_version,
        "compression": f"{manifest.compression}-{manifest.level}",
        "key_id": manifest.key_id,
        "data_checksums": manifest.data_checksums,
        "tablespaces": [t.__dict__ for t in manifest.tablespaces],
        "objects": len(manifest.objects()),
        "bad_pages_by_file": {p: list(b) for p, b in manifest.bad_pages.items()},
    }
    if output == "json":
        emit_json(summary | {"backup_label": manifest.backup_label})
        return
    for name, value in summary.items():
        if name != "bad_pages_by_file":
            click.echo(f"{name + ':':20} {value}")
    _warn_bad_pages(manifest)


@backup_group.command("verify", epilog=_EXIT_CODES)
@config_option
@click.argument("backup", required=False)
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=2, show_default=True)
@output_option
def verify_command(config_path: Path, backup: str | None, jobs: int, output: str) -> None:
    """Re-read a backup's objects (every complete backup without BACKUP) and check them.

    Every file's SHA-256 and size, every record's check, and the archived WAL the backup
    needs. Each problem names the object; the exit code is 1 if there is any.
    """
    from pgwarden.backup.verify import verify_backup  # noqa: PLC0415

    _, context = _context(config_path)
    catalog = context.catalog
    manifests = [catalog.resolve(backup)] if backup else catalog.manifests()
    if not manifests:
        fail(f"there is no complete backup of cluster {context.layout.cluster} to verify")
    reports = [
        verify_backup(context.store, context.layout, context.key, m, jobs) for m in manifests
    ]
    if output == "json":
        emit_json(
            [
                {
                    "backup": r.backup, "ok": r.ok, "objects": r.objects, "files": r.files,
                    "bytes": r.bytes, "problems": [p.__dict__ for p in r.problems],
                }
                for r in reports
            ]
        )  # fmt: skip
    else:
        for report in reports:
            state = "ok" if report.ok else f"{len(report.problems)} problem(s)"
            click.echo(
                f"backup {report.backup}: {report.objects} objects, {report.files} files, "
                f"{_mb(report.bytes)} checked: {state}"
            )
            for problem in report.problems:
                click.echo(f"  {problem.sentence()}")
    if not all(r.ok for r in reports):
        raise SystemExit(1)


@backup_group.command("delete", epilog=_EXIT_CODES)
@config_option
@click.argument("backup")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete_command(config_path: Path, backup: str, yes: bool) -> None:
    """Delete one backup. Refused while a later incremental backup uses its files."""
    _, context = _context(config_path)
    catalog = context.catalog
    manifest = catalog.resolve(backup)
    others = [m for m in catalog.manifests() if m.id != manifest.id]
    users = catalog.dependents(manifest.id, others)
    if users:
        fail(
            f"backup {manifest.id} holds files that {', '.join(users)} still use; "
            "delete those first"
        )
    if not yes:
        if not sys.stdin.isatty():
            fail("deleting a backup needs --yes when not run from a terminal")
        click.confirm(f"Delete backup {manifest.id} ({_mb(manifest.db_bytes)})?", abort=True)
    removed = catalog.delete(manifest.id, others=others)
    click.echo(f"deleted backup {manifest.id} ({removed} objects)")


@backup_group.command("expire", epilog=_EXIT_CODES)
@config_option
@click.option("--dry-run", is_flag=True, help="Only show what the retention policy would delete.")
@output_option
def expire_command(config_path: Path, dry_run: bool, output: str) -> None:
    """Apply the retention policy: expired backups, WAL they alone needed, abandoned runs."""
    settings, context = _context(config_path)
    result = _expire(settings, context, dry_run=dry_run)
    would = "would delete" if dry_run else "deleted"
    if output == "json":
        emit_json(
            {
                "dry_run": dry_run,
                "keep": list(result.plan.keep),
                "reasons": dict(result.plan.reasons),
                "backups": list(result.backups_deleted),
                "abandoned": list(result.abandoned_deleted),
                "wal_segments": result.wal_deleted,
            }
        )
        return
    for ident in result.plan.keep:
        click.echo(f"keep {ident}: {result.plan.reasons[ident]}")
    for ident in result.backups_deleted:
        click.echo(f"{would} backup {ident}")
    for ident in result.abandoned_deleted:
        click.echo(f"{would} abandoned incomplete backup {ident}")
    click.echo(f"{would} {result.wal_deleted} WAL segment(s)")


def target_options(func: Any) -> Any:
    """The point-in-time target options of `restore` and `drill run`."""
    for option in reversed(_TARGET_OPTIONS):
        func = option(func)
    return func


_TARGET_OPTIONS = [
    click.option("--target-time", help="Recover up to this time (ISO 8601 with a zone)."),
    click.option("--target-lsn", help="Recover up to this WAL position (0/3000028)."),
    click.option("--target-xid", help="Recover up to this transaction id."),
    click.option("--target-name", help="Recover up to this restore point."),
    click.option(
        "--target",
        "target_immediate",
        type=click.Choice(["immediate"]),
        help="immediate: stop as soon as the backup is consistent.",
    ),
    click.option(
        "--target-action",
        type=click.Choice(["promote", "pause", "shutdown"]),
        default="promote",
        show_default=True,
        help="What to do at the target.",
    ),
    click.option(
        "--target-timeline",
        default="latest",
        show_default=True,
        help="latest, current or a timeline number.",
    ),
]


@click.command("restore", epilog=_EXIT_CODES)
@config_option
@click.option(
    "--backup", "selector", default="latest", show_default=True, help="A backup id or `latest`."
)
@click.option(
    "--target-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Where to restore; must be empty or missing unless --delta.",
)
@click.option(
    "--delta",
    is_flag=True,
    help="Restore over an existing directory, keeping files that already match.",
)
@click.option("--standby", is_flag=True, help="Start as a standby (standby.signal).")
@click.option(
    "--archive",
    is_flag=True,
    help="Keep the backup's archive_command: the copy archives into the same archive once it "
    "runs (a disaster recovery that replaces the cluster). Default: archive_mode = off, so a "
    "test copy's new timeline never reaches the production archive.",
)
@target_options
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=2, show_default=True)
@output_option
def restore_command(
    config_path: Path, selector: str, target_dir: Path, delta: bool, standby: bool,
    archive: bool, jobs: int, output: str, **targets: Any,
) -> None:  # fmt: skip
    """Restore a base backup, with recovery settings that fetch WAL from the archive.

    Start PostgreSQL on the directory afterwards: it replays archived WAL through
    `pgwarden wal-fetch` until the end of the archive, then promotes (or, with
    --standby, keeps following).
    """
    from pgwarden.backup.restore import RestoreRequest, RestoreRun  # noqa: PLC0415
    from pgwarden.backup.targets import check_backup_reaches, choose_backup  # noqa: PLC0415

    settings, context = _context(config_path)
    target = recovery_target(**targets)
    if target.kind is not None and selector == "latest":
        manifest = choose_backup(context.catalog.manifests(), target)
    else:
        manifest = context.catalog.resolve(selector)
        check_backup_reaches(manifest, target)
    check_archive_for(context, manifest, target)
    request = RestoreRequest(
        target_dir=target_dir.absolute(),
        delta=delta,
        jobs=jobs,
        owner=restore_owner(settings),
        restore_command=restore_command_for(settings, config_path, target_dir.absolute()),
        standby=standby,
        settings=target.settings() | ({} if archive else {"archive_mode": "off"}),
    )
    with _progress("restore", output) as progress:
        result = RestoreRun(
            context.store, context.layout, context.key, manifest, request, progress
        ).run()
    if output == "json":
        emit_json(result.__dict__)
        return
    kept = f", {result.files_kept} kept" if delta else ""
    click.echo(
        f"restored backup {result.backup} into {target_dir}: {result.files_written} files "
        f"written{kept}, {_mb(result.written_bytes)} in {result.seconds} s"
    )


def check_archive_for(context: BackupContext, manifest: Manifest, target: RecoveryTarget) -> None:
    """Refuse targets past the archive's end or on a timeline it does not know."""
    if target.kind != "lsn" and not target.timeline.isdigit():
        return
    from pgwarden.backup.targets import check_archive_reaches  # noqa: PLC0415
    from pgwarden.wal.check import check_archive  # noqa: PLC0415

    found = check_archive(context, manifest).continuity
    timelines = [timeline for timeline, _, _ in found.path]
    check_archive_reaches(target, timelines, found.last, manifest.segment_size)


def recovery_target(
    target_time: str | None, target_lsn: str | None, target_xid: str | None,
    target_name: str | None, target_immediate: str | None, target_action: str,
    target_timeline: str,
) -> RecoveryTarget:  # fmt: skip
    time, lsn, xid, name = target_time, target_lsn, target_xid, target_name
    immediate, action, timeline = target_immediate, target_action, target_timeline
    options: list[tuple[TargetKind, str | None]] = [
        ("time", time), ("lsn", lsn), ("xid", xid), ("name", name), ("immediate", immediate),
    ]  # fmt: skip
    given = [(kind, value) for kind, value in options if value is not None]
    if len(given) > 1:
        fail("give at most one of --target-time, --target-lsn, --target-xid, --target-name "
             "and --target immediate")  # fmt: skip
    kind: TargetKind | None = given[0][0] if given else None
    value = given[0][1] or "" if given else ""
    target = RecoveryTarget(kind, value, action, timeline)  # type: ignore[arg-type]
    check_target(target)
    return target


MAX_SOCKET_PATH = 100  # a unix socket path has room for 107 bytes


def restore_command_for(settings: Settings, config_path: Path, data_dir: Path) -> str:
    """restore_command of a restored copy: through `pgwarden wal-serve` (or the agent, once
    it runs the directory) when one answers on its socket, else straight from storage."""
    from pgwarden.agent.wal import restored_wal_paths  # noqa: PLC0415
    from pgwarden.invocation import wal_restore_command  # noqa: PLC0415

    own = data_dir == settings.postgres.data_dir
    socket, spool = restored_wal_paths(data_dir, settings.wal.socket if own else None)
    if len(os.fsencode(socket)) > MAX_SOCKET_PATH:
        return pgwarden_command(config_path, "wal-fetch", "%f", "%p")
    return wal_restore_command(config_path, str(socket), spool)


def restore_owner(settings: Settings) -> tuple[int, int] | None:
    """Root restores for the configured PostgreSQL OS user; anyone else for themselves."""
    if os.geteuid() != 0 or not settings.postgres.os_user:
        return None
    try:
        entry = pwd.getpwnam(settings.postgres.os_user)
    except KeyError:
        fail(f"postgres.os_user {settings.postgres.os_user!r} does not exist on this host")
    return entry.pw_uid, entry.pw_gid
