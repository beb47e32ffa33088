"""WAL archiving under pgbench at full speed, and fetching it back.

One agent-run member (ZooKeeper, the lab S3 endpoint as storage, archive_command and
restore_command through `pgwarden wal-push/wal-fetch --socket`). pgbench runs for
--seconds; meanwhile `pg_wal/archive_status` is listed each time inotify reports a
marker created or renamed there (and every 50 ms anyway): a segment's push latency is the
time from its `.ready` marker appearing to it turning `.done`, which is what PostgreSQL
experiences (the archiver noticing it, archive_command running, the answer), and the
number of `.ready` markers at once is the backlog. (Until session 6 the directory was
listed every 2 ms, which cost the benchmark itself 5% of a core, taken from the system
it measures, and quantised each time stamp to up to 2 ms.)

Then fetching: every archived segment is fetched once in order with `pgwarden wal-fetch`
through the agent (as PostgreSQL's replay asks for them, one after another, so the
agent's prefetch works ahead), and once directly against storage (no agent) for scale.

Keys: segments_generated, segments_archived, push_latency_ms_p50, push_latency_ms_p99,
max_ready_backlog, fetch_segments_per_s (through the agent), plus direct figures. With
--put-probe BYTES it also PUTs an object of that size every 2 s during pgbench with the
archiver's client code and reports put_probe_ms_*: the least a push that stores the
segment after `.ready` can take on this endpoint under this load. With --cp-baseline
it runs the same pgbench with PostgreSQL archiving by plain `cp` instead (no agent, no S3
endpoint, no fetch): the push figures of the least any archive_command costs here.

Also reported, for reading the figures: cpu_pressure_pct, the share of pgbench's run in
which some runnable task waited for a CPU (the kernel's PSI "some" line; pgbench, its
backends, the S3 endpoint and the agent share two cores here, so every step of a push
waits its turn), and fetch_cpu_ms_per_segment, where the fetch's CPU went.
Prints JSON on stdout (and to --json FILE); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from pgwarden.config import S3Storage
from pgwarden.invocation import pgwarden_command
from pgwarden.lab import Lab, LabSpec, scratch_directory
from pgwarden.lab.archiving import s3_storage
from pgwarden.lab.ha import HaCluster
from pgwarden.storage import ObjectStore, open_store
from pgwarden.wal.dirwatch import IN_CREATE, IN_MOVED_TO, DirectoryWatch
from pgwarden.wal.names import kind_of


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class StatusWatcher(threading.Thread):
    """Watches archive_status: when each .ready appeared and when it turned .done."""

    def __init__(self, status_dir: Path) -> None:
        super().__init__(daemon=True)
        self.status_dir = status_dir
        self.ready_at: dict[str, float] = {}
        self.done_at: dict[str, float] = {}
        self.max_ready = 0
        self.stop = threading.Event()

    def run(self) -> None:
        watch = DirectoryWatch(self.status_dir, mask=IN_CREATE | IN_MOVED_TO)
        try:
            while not self.stop.is_set():
                self._look(time.monotonic())
                watch.wait(0.05)
        finally:
            watch.close()

    def _look(self, now: float) -> None:
        try:
            names = os.listdir(self.status_dir)
        except OSError:
            names = []
        ready = 0
        for entry in names:
            base, _, suffix = entry.rpartition(".")
            if kind_of(base) != "segment":
                continue
            if suffix == "ready":
                ready += 1
                self.ready_at.setdefault(base, now)
            elif suffix == "done" and base in self.ready_at:
                self.done_at.setdefault(base, now)
        self.max_ready = max(self.max_ready, ready)


class PutProbe(threading.Thread):
    """PUTs an object the size of an archived segment to the lab's S3 endpoint every
    `interval` seconds with the archiver's own client code, timing each: what storing a
    segment after its `.ready` marker appeared costs at the least on this endpoint under
    the same load, whatever the archiver does. It adds PUTs of its own (about half as many
    as the archiver's), so it runs only when asked (--put-probe)."""

    def __init__(self, store: ObjectStore, size: int, interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.body = os.urandom(size)  # compressed WAL does not compress further either
        self.interval = interval
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        count = 0
        while not self.stop.wait(self.interval):
            started = time.monotonic()
            self.store.put(f"probe-{count}", self.body, {"sha256": "0" * 64}, if_absent=True)
            self.latencies.append((time.monotonic() - started) * 1000)
            count += 1


def put_probe(lab: Lab, scratch: Path, size: int) -> PutProbe:
    assert lab.s3 is not None
    section = s3_storage(lab.s3, "put-probe", scratch / "put-probe.credentials", None)
    store = open_store(S3Storage.model_validate(section))
    store.put("warm", b"", {})  # the first request's one-time costs
    return PutProbe(store, size)


def pgbench(lab: Lab, member: str, seconds: int, scale: int) -> float | None:
    """Run pgbench; the share of its run (%) in which some runnable task waited for a
    CPU (PSI), or None where the kernel has no /proc/pressure."""
    dsn = lab.member(member).dsn()
    env = dict(os.environ) | {"PGPASSWORD": lab.credentials.superuser_password}
    binary = str(lab.bin_dir / "pgbench")
    subprocess.run([binary, "-i", "-q", "-s", str(scale), dsn], env=env, check=True,
                   capture_output=True)  # fmt: skip
    log(f"pgbench -c 4 -j 2 for {seconds} s")
    waited, started = cpu_waited_us(), time.monotonic()
    subprocess.run([binary, "-n", "-c", "4", "-j", "2", "-T", str(seconds), dsn], env=env,
                   check=True, capture_output=True)  # fmt: skip
    after, elapsed = cpu_waited_us(), time.monotonic() - started
    if waited is None or after is None:
        return None
    return round((after - waited) / (elapsed * 1e6) * 100, 1)


def cpu_waited_us() -> int | None:
    """Microseconds since boot in which some runnable task waited for a CPU (PSI)."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return None
    return int(first.rsplit("total=", 1)[1])


def cpu_ms(pid: int) -> tuple[float, float]:
    """(user, system) CPU milliseconds process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = 1000 / os.sysconf("SC_CLK_TCK")
    return int(fields[11]) * tick, int(fields[12]) * tick


def children_cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * 1000


def fetch_all(command: str, names: list[str], into: Path) -> tuple[float, float]:
    """Run restore_command `command` for each name in order, one shell per name as
    PostgreSQL does: (segments/s, median milliseconds per call)."""
    target = into / "RECOVERYXLOG"
    started = time.monotonic()
    calls = []
    for name in names:
        filled = command.replace("%f", name).replace("%p", shlex.quote(str(target)))
        call = time.monotonic()
        # As PostgreSQL does before each restore_command (RestoreArchivedFile): the command
        # never replaces a file. Replacing one by rename costs ext4 a forced writeback of
        # the new file (auto_da_alloc), which PostgreSQL never asks of it.
        target.unlink(missing_ok=True)
        done = subprocess.run(["/bin/sh", "-c", filled], capture_output=True, check=False)
        calls.append((time.monotonic() - call) * 1000)
        if done.returncode != 0:
            raise RuntimeError(f"wal-fetch {name} failed: {done.stderr.decode().strip()}")
    return len(names) / (time.monotonic() - started), statistics.median(calls)


def run(seconds: int, scale: int, direct_sample: int, probe_size: int = 0) -> dict[str, Any]:
    lab = Lab.create(
        scratch_directory("walbench"),
        LabSpec(zookeeper_nodes=1, s3=True, postgres_nodes=1, agents=True,
                agent_storage="s3", synchronous_mode="off",
                # More checkpoints, more full-page images: more WAL per second.
                agent_overrides={"postgres": {"parameters": {"max_wal_size": "256MB"}}}),
    )  # fmt: skip
    try:
        primary = HaCluster(lab).wait_converged()
        data_dir = lab.member(primary).data_dir
        probe = put_probe(lab, lab.directory, probe_size) if probe_size else None
        pushed, archived = archive_under_pgbench(lab, primary, seconds, scale, probe)
        with urllib.request.urlopen(lab.agent_url(primary) + "/status", timeout=5) as answer:
            wal_status = json.load(answer).get("wal") or {}
        with lab.connect(primary, autocommit=True) as conn:
            # What the agent configured, as PostgreSQL runs it.
            restore_command = conn.execute("SHOW restore_command").fetchone()[0]
        direct_command = pgwarden_command(lab.agent_config_path(primary), "wal-fetch", "%f", "%p")
        with tempfile.TemporaryDirectory(dir=data_dir.parent) as scratch:
            log(f"fetching {len(archived)} segments through the agent: {restore_command}")
            processes = {"agent": lab.process(f"agent-{primary}").pid, "s3": lab.process("s3").pid}
            before = cpu_snapshot(processes)
            through_agent, agent_call_ms = fetch_all(restore_command, archived, Path(scratch))
            fetch_cpu = fetch_cpu_figures(before, cpu_snapshot(processes), len(archived))
            sample = archived[:direct_sample]
            log(f"fetching {len(sample)} segments directly")
            direct, direct_call_ms = fetch_all(direct_command, sample, Path(scratch))
        with urllib.request.urlopen(lab.agent_url(primary) + "/status", timeout=5) as answer:
            fetch_status = (json.load(answer).get("wal") or {}).get("fetch")
        return (
            {"seconds": seconds, "scale": scale}
            | pushed
            | {
                "precompressed": wal_status.get("precompressed"),
                "fetch_segments_per_s": round(through_agent, 1),
                "fetch_call_ms_p50": round(agent_call_ms, 1),
                "fetch_agent": fetch_status,  # served, and how many from the prefetched spool
                "fetch_cpu_ms_per_segment": fetch_cpu,
                "fetch_direct_segments_per_s": round(direct, 1),
                "fetch_direct_call_ms_p50": round(direct_call_ms, 1),
            }
            | ({} if probe is None else _probe_figures(probe))
        )
    finally:
        lab.down()


def run_cp_baseline(seconds: int, scale: int) -> dict[str, Any]:
    """The same pgbench with PostgreSQL alone archiving by `cp` into a local directory (the
    lab's plain archive_command; no agent, no S3 endpoint, nothing fetched): what archiving
    costs PostgreSQL under this load at the least, whatever the archiver."""
    lab = Lab.create(
        scratch_directory("walbench-cp"),
        LabSpec(zookeeper_nodes=0, s3=False, postgres_nodes=1, agents=False,
                postgres_settings=(("max_wal_size", "'256MB'"),)),
    )  # fmt: skip
    try:
        primary = lab.members[0].name
        with lab.connect(primary, autocommit=True) as conn:
            command = conn.execute("SHOW archive_command").fetchone()[0]
        log(f"archive_command: {command}")
        pushed, _ = archive_under_pgbench(lab, primary, seconds, scale, None)
        return {"seconds": seconds, "scale": scale, "archive_command": command} | pushed
    finally:
        lab.down()


def archive_under_pgbench(
    lab: Lab, primary: str, seconds: int, scale: int, probe: PutProbe | None
) -> tuple[dict[str, Any], list[str]]:
    """Run pgbench on `primary` while watching its archive_status, then switch WAL and wait
    until everything ready is archived: the push figures, and the archived names."""
    watcher = StatusWatcher(lab.member(primary).data_dir / "pg_wal" / "archive_status")
    watcher.start()
    with lab.connect(primary, autocommit=True) as conn:
        start_lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    if probe is not None:
        probe.start()
    pressure = pgbench(lab, primary, seconds, scale)
    if probe is not None:
        probe.stop.set()
        probe.join()
    with lab.connect(primary, autocommit=True) as conn:
        conn.execute("SELECT pg_switch_wal()")
        generated = conn.execute(
            "SELECT (pg_current_wal_lsn() - %s::pg_lsn) / (16 * 1024 * 1024)", [start_lsn]
        ).fetchone()[0]
    deadline = time.monotonic() + 60
    while any(n not in watcher.done_at for n in watcher.ready_at):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    watcher.stop.set()
    archived = sorted(watcher.done_at)
    latency = {n: (watcher.done_at[n] - watcher.ready_at[n]) * 1000 for n in archived}
    slowest = sorted(latency.items(), key=lambda pair: -pair[1])[:3]
    figures = (
        {"segments_generated": int(generated), "segments_archived": len(archived)}
        | ms_figures("push_latency_ms", list(latency.values()), p99=True)
        | {
            # (segment, ms): what sets p99 in a short run
            "push_slowest": [(name, round(value, 1)) for name, value in slowest],
            "max_ready_backlog": watcher.max_ready,
            "cpu_pressure_pct": pressure,  # during pgbench: see the module's docstring
        }
    )
    return figures, archived


def ms_figures(prefix: str, ms: list[float], *, p99: bool = False) -> dict[str, float | None]:
    """`<prefix>_p50`, `_p90` (`_p99`) and `_max` of `ms`, rounded; None without samples."""
    if not ms:
        names = ("p50", "p90", "p99", "max") if p99 else ("p50", "p90", "max")
        return {f"{prefix}_{name}": None for name in names}
    figures = {"p50": statistics.median(ms), "p90": percentile(ms, 0.9)}
    if p99:
        figures["p99"] = percentile(ms, 0.99)
    figures["max"] = max(ms)
    return {f"{prefix}_{name}": round(value, 1) for name, value in figures.items()}


def cpu_snapshot(processes: dict[str, int]) -> dict[str, float]:
    """CPU milliseconds used so far: the agent's (user, system), the S3 endpoint's, and
    this process's children's (restore_command's shells and their `mv`s)."""
    agent_user, agent_system = cpu_ms(processes["agent"])
    return {
        "agent_user": agent_user,
        "agent_system": agent_system,
        "s3_endpoint": sum(cpu_ms(processes["s3"])),
        "restore_command": children_cpu_ms(),
    }


def fetch_cpu_figures(
    before: dict[str, float], after: dict[str, float], count: int
) -> dict[str, float]:
    """CPU milliseconds per fetched segment, by `cpu_snapshot`'s parts."""
    return {part: round((after[part] - before[part]) / count, 1) for part in before}


def _probe_figures(probe: PutProbe) -> dict[str, Any]:
    return {
        "put_probe_bytes": len(probe.body),
        "put_probe_count": len(probe.latencies),
    } | ms_figures("put_probe_ms", probe.latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--scale", type=int, default=16)
    parser.add_argument("--direct-sample", type=int, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--put-probe", type=int, default=0, metavar="BYTES",
        help="also PUT an object of BYTES every 2 s during pgbench and time it (put_probe_*)",
    )  # fmt: skip
    parser.add_argument(
        "--cp-baseline", action="store_true",
        help="archive with PostgreSQL's plain cp archive_command instead (no agent, no S3, "
        "no fetch), for scale",
    )  # fmt: skip
    args = parser.parse_args()
    if args.cp_baseline:
        result = run_cp_baseline(args.seconds, args.scale)
    else:
        result = run(args.seconds, args.scale, args.direct_sample, args.put_probe)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
