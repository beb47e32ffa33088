"""Base backup and restore throughput of pgwarden, to the lab S3 endpoint and to a directory.

One lab: one PostgreSQL member (data checksums on) and the S3 endpoint (moto).
`pgbench -i -s S` fills it (S = 64 is about 1 GB). Then, for each storage target
(`s3`: the lab endpoint; `fs`: a directory on the lab's disk), with the member's
archive_command switched to `pgwarden wal-push` into that target:

1. a full backup: `pgwarden backup create -c CONF -j J -o json`;
2. a restore of it into a new directory: `pgwarden restore -c CONF --target-dir DIR -j J
   -o json` (each file is fsynced before its rename, the directories at the end: all of
   it is inside the measured time); the directory is removed afterwards;
3. ~1 % of pgbench_accounts rows changed (`UPDATE ... WHERE aid % 100 = 0`, which
   touches about 60 % of its pages) and a CHECKPOINT; the archiver is let catch up with
   the WAL this made (timed apart, as `archive_catchup_s`), then an incremental backup:
   `pgwarden backup create --type incr -c CONF -j J -o json`.

Each CLI call starts after `sync` (untimed), so that no earlier step's writeback
(pgbench's data, the lab's unsynced `cp` archive) competes with its own fsyncs. Times are
the wall time of the CLI process, interpreter start included; the in-process figures the
commands print (`duration_s` of a backup, `seconds` of a restore) are under `details`.
MB = 10^6 bytes; `*_mb_s` = the database's size (`db_bytes`, what the full backup read)
/ seconds. Compression and the rest are the configuration's defaults. The 1-minute load
average before and after is recorded: other work on the machine shows there.

Everything is cleaned up: restored directories at once, the S3 prefix when its target is
done, the lab (with the fs store in it) at the end, also after an error or a signal.
`--profile DIR` runs each CLI call under `py-spy record` (a flame graph per step; the
times are then not representative).

Prints JSON on stdout (and to --json FILE); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from _common import Interrupted, emit, log

from pgwarden.config import load_config
from pgwarden.lab import Lab, LabSpec, scratch_directory
from pgwarden.lab.archiving import member_config, s3_storage, use_pgwarden_archive, write_config
from pgwarden.lab.postgres import chown_to
from pgwarden.retry import poll_until
from pgwarden.storage import open_store

TARGETS = ("s3", "fs")
TIMEOUT_S = 1800.0
# Same machine, same moto endpoint (MB/s): what the other tools do.
REFERENCE_MB_S = {
    "pgbackrest_2.45": {"backup": 128, "restore": 245},
    "barman_cloud": {"backup": 138, "restore": 305},
}


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(f"received {signal.Signals(signum).name}")


class Run:
    """The lab, its member, and the pgwarden command lines aimed at one target or another.
    `teardown` empties the S3 prefix and removes the lab, whatever happened before."""

    def __init__(self, jobs: int, profile: Path | None) -> None:
        self.jobs = jobs
        self.profile = profile
        self.lab_: Lab | None = None
        self.configs: dict[str, Path] = {}

    def start(self) -> None:
        started = time.monotonic()
        spec = LabSpec(zookeeper_nodes=0, s3=True, postgres_nodes=1)
        self.lab_ = Lab.create(scratch_directory("bench-backup"), spec)
        log("lab up", directory=self.lab.directory, seconds=round(time.monotonic() - started, 1))
        self.work.mkdir(mode=0o700)
        chown_to(self.work, self.lab.os_user)

    @property
    def lab(self) -> Lab:
        assert self.lab_ is not None
        return self.lab_

    @property
    def name(self) -> str:
        return self.lab.members[0].name

    @property
    def work(self) -> Path:
        return self.lab.directory / "work"

    def teardown(self, errors: list[str]) -> None:
        """Stop archiving into the stores, empty the S3 prefix, stop and remove the lab."""
        if self.lab_ is None:
            return
        with contextlib.suppress(Exception):
            self.archive_off_pgwarden()
        if "s3" in self.configs:
            try:
                self.empty_store(self.configs["s3"])
            except Exception as exc:  # noqa: BLE001 - the endpoint goes down with the lab
                errors.append(f"emptying the S3 prefix: {exc}")
        try:
            self.lab.down()
            log("lab removed")
        except Exception as exc:  # noqa: BLE001 - reported; the files are kept
            errors.append(f"lab down: {exc}")
            log("lab down failed; files kept", error=exc, directory=self.lab.directory)

    # ----------------------------------------------------------------- SQL
    def sql(self, query: str) -> list[tuple[Any, ...]]:
        with self.lab.connect(self.name, autocommit=True) as conn:
            cursor = conn.execute(query)
            return cursor.fetchall() if cursor.description else []

    def pgbench_init(self, scale: int) -> None:
        member = self.lab.member(self.name)
        subprocess.run(
            [str(self.lab.bin_dir / "pgbench"), "-i", "-q", "-s", str(scale), member.dsn()],
            env=os.environ | {"PGPASSWORD": self.lab.credentials.superuser_password},
            capture_output=True,
            check=True,
        )

    def wait_archived(self, timeout: float = 600.0) -> None:
        """Switch to a new WAL segment and wait until the archiver has archived the old one
        (and so every earlier one: it archives in order)."""
        (segment,) = self.sql("SELECT pg_walfile_name(pg_switch_wal())")[0]

        def archived() -> bool:
            row = self.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0]
            return row[0] is not None and row[0] >= segment

        poll_until(archived, timeout)

    def archive_to(self, config: Path) -> None:
        """Point archive_command at `pgwarden wal-push -c config` and wait for the reload."""
        use_pgwarden_archive(self.lab, self.name, config, None)
        poll_until(lambda: str(config) in self.sql("SHOW archive_command")[0][0], 10.0)

    def archive_off_pgwarden(self) -> None:
        """Back to the lab's own `cp` archive_command, so no store is written to any more."""
        self.sql("ALTER SYSTEM RESET archive_command")
        self.sql("SELECT pg_reload_conf()")

    # ----------------------------------------------------------------- targets
    def target_config(self, target: str) -> Path:
        if target == "s3":
            endpoint = self.lab.s3
            assert endpoint is not None
            storage = s3_storage(
                endpoint,
                f"bench-backup-{self.lab.lab_id}",
                self.work / "s3-credentials",
                self.lab.os_user,
            )
        else:
            store = self.work / "store-fs"
            store.mkdir(mode=0o700)
            chown_to(store, self.lab.os_user)
            storage = {"type": "fs", "directory": str(store)}
        config = member_config(self.lab, self.name, storage)
        return write_config(self.work / f"pgwarden-{target}.yml", config, self.lab.os_user)

    def empty_store(self, config: Path) -> int:
        store = open_store(load_config(config).storage)
        keys = [info.key for info in store.list()]
        store.delete_many(keys)
        return len(keys)

    # ----------------------------------------------------------------- the CLI
    def pgwarden(self, step: str, *args: str) -> tuple[dict[str, Any], float]:
        """Run `python -m pgwarden ARGS -o json`; its JSON and its wall time (seconds)."""
        argv = [sys.executable, "-m", "pgwarden", *args, "-o", "json"]
        if self.profile is not None:
            self.profile.mkdir(parents=True, exist_ok=True)
            argv = [
                str(Path(sys.executable).parent / "py-spy"), "record", "--rate", "100",
                "--subprocesses", "--threads", "-o", str(self.profile / f"{step}.svg"), "--",
                *argv,
            ]  # fmt: skip
        # Start with nothing dirty in the page cache: the lab's `cp` archiver does not fsync,
        # and writeback of pgbench's ~2 GB would otherwise slow the first steps' fsyncs.
        os.sync()
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(
                f"{step}: pgwarden {' '.join(args)} exited {done.returncode}: "
                f"{done.stderr.strip()[-2000:]}"
            )
        if self.profile is not None:
            # py-spy prints its own lines around the program's output.
            text = done.stdout[done.stdout.index("{") : done.stdout.rindex("}") + 1]
        else:
            text = done.stdout
        return json.loads(text), seconds

    def s3_rss_mb(self) -> float | None:
        """Resident memory of the S3 endpoint (moto keeps every object in memory)."""
        with contextlib.suppress(Exception):
            pid = self.lab.process("s3").pid
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
        return None


def mb_s(size: int, seconds: float) -> float:
    return round(size / seconds / 1e6, 1)


def measure_target(run: Run, target: str, config: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The figures for one target (exactly the published keys) and the details behind them."""
    jobs = str(run.jobs)
    log(f"{target}: full backup", jobs=jobs)
    full, backup_s = run.pgwarden(f"{target}-backup", "backup", "create", "-c", str(config),
                                  "-j", jobs)  # fmt: skip
    if full["kind"] != "full" or full["bad_pages"]:
        raise RuntimeError(f"{target}: unexpected full backup: {full}")
    db_bytes = int(full["db_bytes"])
    log(f"{target}: full backup done", seconds=round(backup_s, 2), db_mb=round(db_bytes / 1e6))
    rss_after_backup = run.s3_rss_mb() if target == "s3" else None

    restore_dir = run.work / f"restored-{target}"
    log(f"{target}: restore", target_dir=restore_dir)
    try:
        restored, restore_s = run.pgwarden(
            f"{target}-restore", "restore", "-c", str(config), "--target-dir", str(restore_dir),
            "-j", jobs,
        )  # fmt: skip
    finally:
        shutil.rmtree(restore_dir, ignore_errors=True)
    if restored["written_bytes"] != db_bytes:
        raise RuntimeError(f"{target}: restore wrote {restored['written_bytes']} of {db_bytes} B")
    log(f"{target}: restore done", seconds=round(restore_s, 2))

    log(f"{target}: changing 1% of pgbench_accounts")
    changed = time.perf_counter()
    run.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 0")
    run.sql("CHECKPOINT")
    update_s = time.perf_counter() - changed
    caught_up = time.perf_counter()
    run.wait_archived()
    catchup_s = time.perf_counter() - caught_up
    log(f"{target}: incremental backup", archive_catchup_s=round(catchup_s, 2))
    incr, incr_s = run.pgwarden(f"{target}-incr", "backup", "create", "--type", "incr", "-c",
                                str(config), "-j", jobs)  # fmt: skip
    if incr["kind"] != "incr" or incr["references"] != [full["id"]]:
        raise RuntimeError(f"{target}: unexpected incremental backup: {incr}")
    log(f"{target}: incremental done", seconds=round(incr_s, 2))

    figures = {
        "db_bytes": db_bytes,
        "backup_s": round(backup_s, 3),
        "backup_mb_s": mb_s(db_bytes, backup_s),
        "stored_bytes": int(full["stored_bytes"]),
        "restore_s": round(restore_s, 3),
        "restore_mb_s": mb_s(db_bytes, restore_s),
        "incremental_after_1pct_change_s": round(incr_s, 3),
        "incremental_uploaded_bytes": int(incr["stored_bytes"]),
    }
    details = {
        "backup_duration_s": full["duration_s"],  # pg_backup_start .. manifest, in process
        "backup_in_process_mb_s": mb_s(db_bytes, full["duration_s"]),
        "backup_files": full["files"],
        "compression_ratio": round(db_bytes / max(1, int(full["stored_bytes"])), 2),
        "restore_seconds": restored["seconds"],  # the restore's own clock
        "restore_in_process_mb_s": mb_s(db_bytes, restored["seconds"]),
        "restore_files_written": restored["files_written"],
        "restore_downloaded_bytes": restored["downloaded_bytes"],
        "update_and_checkpoint_s": round(update_s, 3),
        "archive_catchup_s": round(catchup_s, 3),
        "incremental_duration_s": incr["duration_s"],
        "incremental_db_bytes": incr["db_bytes"],
        "incremental_reused_bytes": incr["reused_bytes"],
    }
    if rss_after_backup is not None:
        details["s3_endpoint_rss_mb_after_backup"] = rss_after_backup
    return figures, details


def benchmark(args: argparse.Namespace, run: Run, result: dict[str, Any]) -> None:
    run.start()
    log("pgbench init", scale=args.scale)
    initialized = time.perf_counter()
    run.pgbench_init(args.scale)
    result["pgbench_init_s"] = round(time.perf_counter() - initialized, 1)
    (size,) = run.sql("SELECT pg_database_size(current_database())")[0]
    result["pg_database_size_bytes"] = int(size)
    run.wait_archived()  # the lab's `cp` archiver: done with pgbench's WAL before we measure
    log("pgbench init done", seconds=result["pgbench_init_s"], mb=round(size / 1e6))

    for target in args.targets:
        run.configs[target] = config = run.target_config(target)
        run.archive_to(config)
        run.wait_archived()  # from here on, the segments go to this target
        figures, details = measure_target(run, target, config)
        result["targets"][target] = figures
        result["details"][target] = details
        log(f"{target} done", **figures)
        run.archive_off_pgwarden()
        if target == "s3":
            details["objects_removed"] = run.empty_store(config)
            del run.configs[target]  # nothing left for the teardown to remove


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=64, help="pgbench scale (64: about 1 GB)")
    parser.add_argument("--jobs", "-j", type=int, default=2, help="-j of backup and restore")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated storage targets, of {', '.join(TARGETS)}",
    )
    parser.add_argument("--profile", type=Path, help="py-spy flame graphs into this directory")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not args.targets or set(args.targets) - set(TARGETS):
        parser.error(f"--targets must name some of {', '.join(TARGETS)}")
    if args.scale < 1 or args.jobs < 1:
        parser.error("--scale and --jobs must be at least 1")

    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "backup",
        "scale": args.scale,
        "jobs": args.jobs,
        "cpus": os.cpu_count(),
        "profiled": args.profile is not None,
        "load_average_1m": [round(os.getloadavg()[0], 2)],
        "pgbench_init_s": None,
        "pg_database_size_bytes": None,
        "targets": {},
        "details": {},
        "reference_mb_s": REFERENCE_MB_S,
        "errors": [],
    }
    previous = {
        sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    run = Run(args.jobs, args.profile)
    interrupted = False
    try:
        benchmark(args, run, result)
    except (KeyboardInterrupt, Interrupted) as exc:
        log("interrupted", reason=exc or "Ctrl-C")
        interrupted = True
    except Exception as exc:  # noqa: BLE001 - reported in the JSON
        result["errors"].append(f"{type(exc).__name__}: {exc}")
        log("benchmark failed", error=exc)
    finally:
        with _ignoring_signals():
            run.teardown(result["errors"])
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    result["load_average_1m"].append(round(os.getloadavg()[0], 2))
    result["wall_s"] = round(time.monotonic() - started, 1)
    emit(result, args.json)
    if interrupted:
        return 130
    return 1 if result["errors"] else 0


@contextlib.contextmanager
def _ignoring_signals() -> Iterator[None]:
    """A second Ctrl-C must not leave a half-stopped lab behind."""
    ignored = {
        sig: signal.signal(sig, signal.SIG_IGN)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for sig, handler in ignored.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
