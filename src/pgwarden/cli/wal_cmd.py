"""`pgwarden wal-push %p` (archive_command) and `pgwarden wal-fetch %f %p` (restore_command)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pgwarden.cli.common import config_option
from pgwarden.cli.render import emit_json, fail, output_option

# restore_command: PostgreSQL treats exit 1 as "not archived" and stops recovery from
# the archive; an exit code above 125 would make it abort.
_NOT_FOUND = 1


def socket_option(func: Any) -> Any:
    return click.option(
        "--socket",
        "socket_path",
        type=click.Path(dir_okay=False),
        help="The local agent's WAL socket; when nobody answers there, storage is used directly.",
    )(func)


@click.command("wal-push")
@config_option
@socket_option
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def wal_push_command(config_path: Path, socket_path: str | None, path: Path) -> None:
    """Archive one WAL file (use as archive_command = 'pgwarden wal-push %p').

    A file already archived with identical content succeeds; different content fails
    and the archived file is kept.
    """
    from pgwarden.backup.context import BackupContext  # noqa: PLC0415
    from pgwarden.config import load_config  # noqa: PLC0415

    context = BackupContext.from_settings(load_config(config_path))
    context.wal.push(path)


@click.command("wal-fetch")
@config_option
@socket_option
@click.argument("name")
@click.argument("destination", type=click.Path(dir_okay=False, path_type=Path))
def wal_fetch_command(
    config_path: Path, socket_path: str | None, name: str, destination: Path
) -> None:
    """Fetch one archived WAL file (restore_command = 'pgwarden wal-fetch %f %p').

    Exit code 1 without a message when the file is not archived: PostgreSQL asks for
    files past the end of the archive as a matter of course.
    """
    from pgwarden.backup.context import BackupContext  # noqa: PLC0415
    from pgwarden.config import load_config  # noqa: PLC0415

    context = BackupContext.from_settings(load_config(config_path))
    if not context.wal.fetch(name, destination):
        raise SystemExit(_NOT_FOUND)


@click.command("wal-serve")
@config_option
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The restored copy whose restore_command to serve.",
)
def wal_serve_command(config_path: Path, data_dir: Path) -> None:
    """Serve restore_command for a copy made by `pgwarden restore`, until interrupted.

    Prefetches the WAL replay needs next into a spool beside the directory, as the agent
    does for its own instance, so replay takes each segment with a plain `mv` instead of
    one download per process. Run it beside the restored PostgreSQL; without it (or an
    agent running the directory) restore_command fetches straight from storage.
    """
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from pgwarden.agent.wal import restored_wal_paths  # noqa: PLC0415
    from pgwarden.agent.walserver import WalServer  # noqa: PLC0415
    from pgwarden.backup.context import BackupContext  # noqa: PLC0415
    from pgwarden.cli.backup_cmd import restore_owner  # noqa: PLC0415
    from pgwarden.config import load_config  # noqa: PLC0415
    from pgwarden.wal.client import answering  # noqa: PLC0415
    from pgwarden.wal.fetcher import Fetcher  # noqa: PLC0415
    from pgwarden.wal.names import DEFAULT_SEGMENT_SIZE  # noqa: PLC0415

    settings = load_config(config_path)
    data_dir = data_dir.absolute()
    if not (data_dir / "PG_VERSION").is_file():
        fail(f"{data_dir} is not a PostgreSQL data directory (restore one with pgwarden restore)")
    own = data_dir == settings.postgres.data_dir
    socket, spool = restored_wal_paths(data_dir, settings.wal.socket if own else None)
    if answering(str(socket)):
        fail(f"something already serves {data_dir}'s WAL on {socket} (its agent?)")
    context = BackupContext.from_settings(settings)
    owner = restore_owner(settings)
    fetcher = Fetcher(context.wal, spool, segment_size=lambda: DEFAULT_SEGMENT_SIZE, owner=owner)
    server = WalServer(socket, None, fetcher, data_dir / "pg_wal", owner)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    server.start()
    click.echo(f"serving the WAL of {data_dir} on {socket}; stop with Ctrl-C", err=True)
    try:
        stop.wait()
    finally:
        server.stop()
        fetcher.stop()
    served = fetcher.snapshot()
    click.echo(
        f"served {served['served']} WAL files ({served['prefetch_hits']} prefetched)", err=True
    )


@click.command("check")
@config_option
@output_option
def check_command(config_path: Path, output: str) -> None:
    """Check that the archive holds every WAL segment recovery needs.

    Follows the newest timeline's history from the first segment the oldest backup needs
    to the newest archived segment, and checks each backup's own WAL range. Every missing
    segment is named; the exit code is 1 if any is, or if the archive holds no WAL.
    """
    from pgwarden.backup.context import BackupContext  # noqa: PLC0415
    from pgwarden.config import load_config  # noqa: PLC0415
    from pgwarden.wal.check import check_archive  # noqa: PLC0415

    context = BackupContext.from_settings(load_config(config_path))
    report = check_archive(context)
    found = report.continuity
    timelines = " -> ".join(str(tl) for tl, _, _ in found.path)
    if output == "json":
        emit_json(
            {
                "ok": report.ok,
                "timelines": [tl for tl, _, _ in found.path],
                "oldest_backup": report.oldest_backup,
                "first": found.first,
                "last": found.last,
                "segments_checked": found.checked,
                "gaps": list(found.gaps),
                "backup_problems": [p.sentence() for p in report.backup_problems],
            }
        )
    elif found.first is None:
        click.echo(
            "nothing to recover with: the archive holds no WAL segment on the newest "
            f"timeline's path (looked under {context.layout.wal_prefix} in {context.store!r})"
        )
        for problem in report.backup_problems:
            click.echo(f"  {problem.sentence()}")
    else:
        since = f"the oldest backup {report.oldest_backup}" if report.oldest_backup else "its start"
        state = "no gaps" if not found.gaps else f"{len(found.gaps)} missing segment(s)"
        click.echo(
            f"archive: timelines {timelines}; {found.checked} segments from {found.first} "
            f"({since}) to {found.last}: {state}"
        )
        for name in found.gaps:
            click.echo(f"  missing: {name}")
        for problem in report.backup_problems:
            click.echo(f"  {problem.sentence()}")
    if not report.ok:
        raise SystemExit(1)
