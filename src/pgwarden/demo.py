"""`make demo`: the main job on one machine, start to end, then everything removed.

A lab with ZooKeeper, an S3 endpoint and three pgwarden agents that bootstrap a cluster
(a primary and two synchronous-capable replicas). Rows written on the primary are read on
the replicas; then the primary's host is killed (agent, PostgreSQL and its backends at
once) while a writer commits every 10 ms, a replica takes over, the old primary rejoins
through pg_rewind, and a checker shows no acknowledged write was lost.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from pgwarden.cli.lab_cmd import _render_text
from pgwarden.cli.list_cmd import cluster_rows
from pgwarden.dcs.zookeeper import ZooKeeperStore
from pgwarden.lab import Lab, LabError, LabSpec, s3, scratch_directory
from pgwarden.lab.ha import HaCluster
from pgwarden.lab.writer import Writer
from pgwarden.logs import configure_logging


def step(text: str) -> None:
    click.secho(f"\n==> {text}", bold=True)


def show_services(lab: Lab) -> None:
    """Write and read back an object through boto3; ZooKeeper is shown by `list` below."""
    endpoint = lab.s3
    assert endpoint is not None
    client = s3.client(endpoint)
    client.put_object(Bucket=endpoint.bucket, Key="demo/hello.txt", Body=b"hello from the demo")
    body = client.get_object(Bucket=endpoint.bucket, Key="demo/hello.txt")["Body"].read()
    click.echo(f"s3 {endpoint.url}/{endpoint.bucket}/demo/hello.txt = {body.decode()!r}")


def show_members(lab: Lab) -> None:
    """What `pgwarden list` prints, read from ZooKeeper."""
    store = ZooKeeperStore(lab.zookeeper_hosts, "lab")
    store.start(timeout=5)
    try:
        cluster = store.read()
    finally:
        store.stop()
    for row in cluster_rows(cluster):
        lag = "-" if row["lag_bytes"] is None else row["lag_bytes"]
        click.echo(
            f"  {row['member']:6} {row['role']:8} {row['state']:8} TL {row['timeline']}  "
            f"lag {lag:>6}  sync {'yes' if row['sync'] else 'no ':3}  {row['decision']}"
        )


def wait_replayed(lab: Lab, member: str, lsn: str, timeout: float = 30.0) -> float:
    """Seconds until `member` has replayed WAL up to `lsn`."""
    start = time.monotonic()
    with lab.connect(member, autocommit=True) as conn:
        while time.monotonic() - start < timeout:
            row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()
            if row and row[0]:
                return time.monotonic() - start
            time.sleep(0.01)
    raise LabError(f"{member} did not replay up to {lsn} within {timeout:g} s")


def replicate_rows(lab: Lab, primary: str) -> None:
    step(f"write 1000 rows on the primary ({primary}), read them on each replica")
    with lab.connect(primary, autocommit=True) as conn:
        conn.execute("CREATE TABLE demo_orders (id int PRIMARY KEY, placed_at timestamptz)")
        conn.execute("INSERT INTO demo_orders SELECT g, now() FROM generate_series(1, 1000) g")
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        lsn = row[0]
    for member in lab.members:
        if member.name == primary:
            continue
        seconds = wait_replayed(lab, member.name, lsn)
        with lab.connect(member.name) as conn:
            counted = conn.execute("SELECT count(*) FROM demo_orders").fetchone()
        assert counted is not None
        click.echo(
            f"{member.name}: {counted[0]} rows, caught up {seconds * 1000:.0f} ms after the commit"
        )
        if counted[0] != 1000:
            raise LabError(f"{member.name} shows {counted[0]} rows, expected 1000")


def failover(cluster: HaCluster, old: str) -> None:
    step(f"kill the primary's host ({old}: agent, PostgreSQL, backends) during writes")
    writer = Writer(cluster.names(), cluster.conninfo)
    Writer.prepare(cluster.conninfo(old))
    writer.start()
    try:
        time.sleep(1.0)
        fault = time.monotonic()
        cluster.signal_host(old, signal.SIGKILL)
        new = cluster.wait_primary(30, not_=old)
        took = writer.wait_for_commit_after(fault, 30)
        click.echo(
            f"{new} took over; first commit {took:.2f} s after the fault"
            if took is not None
            else f"{new} took over, but no commit was acknowledged within 30 s"
        )
        show_members(cluster.lab)

        step(f"restart {old}'s agent: it rewinds and rejoins as a replica")
        cluster.restart_agent(old)
        primary = cluster.wait_converged(60)
        time.sleep(0.5)
    finally:
        writer.stop()
    report = writer.check(cluster.conninfo(primary))
    show_members(cluster.lab)
    click.echo(
        f"writer: {report.acknowledged} commits acknowledged, "
        f"{len(report.lost_writes)} lost, {len(report.split_brain)} moments with two primaries"
    )
    if report.lost_writes or report.split_brain:
        raise LabError("the checker found lost writes or two primaries")


def pgwarden(lab: Lab, member: str, *args: str) -> None:
    """Run a pgwarden command with `member`'s configuration and show what it prints."""
    argv = [sys.executable, "-m", "pgwarden", *args, "-c", str(lab.agent_config_path(member))]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    click.echo((done.stdout + done.stderr).rstrip())
    if done.returncode != 0:
        raise LabError(f"pgwarden {' '.join(args)} failed")


def run_demo(directory: Path) -> None:
    step(f"lab up in {directory}: ZooKeeper, S3, three pgwarden agents (synchronous mode)")
    started = time.monotonic()
    spec = LabSpec(
        zookeeper_nodes=1, s3=True, postgres_nodes=3, agents=True, synchronous_mode="on",
        agent_storage="s3",
    )  # fmt: skip
    lab = Lab.create(directory, spec)
    try:
        cluster = HaCluster(lab)
        primary = cluster.wait_converged()
        click.echo(f"agents bootstrapped the cluster in {time.monotonic() - started:.1f} s")
        _render_text(lab.status())
        show_services(lab)
        step("pgwarden list")
        show_members(lab)
        replicate_rows(lab, primary)
        step(f"pgwarden backup create on {primary} (to the lab's S3 endpoint; WAL is archived)")
        pgwarden(lab, primary, "backup", "create")
        failover(cluster, primary)
        step("pgwarden check: the archive holds every WAL segment across the failover")
        pgwarden(lab, cluster.wait_converged(), "check")
    finally:
        step("lab down")
        lab.down()
        click.echo(f"stopped every process and removed {directory}")


def main() -> None:
    configure_logging("warning")
    base = scratch_directory("demo")
    try:
        run_demo(base)
    except LabError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.secho("\ndemo finished", bold=True)


if __name__ == "__main__":
    main()
