"""`make demo`: the main job on one machine, start to end, then everything removed.

Today: a lab with ZooKeeper, an S3 endpoint and three PostgreSQL members (a primary and
two streaming replicas); rows written on the primary are read back on each replica.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from pgwarden.cli.lab_cmd import _render_text
from pgwarden.lab import Lab, LabError, LabSpec, s3, scratch_directory
from pgwarden.logs import configure_logging


def step(text: str) -> None:
    click.secho(f"\n==> {text}", bold=True)


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


def show_services(lab: Lab) -> None:
    """Write and read back a znode and an object, through kazoo and boto3."""
    from kazoo.client import KazooClient  # noqa: PLC0415 - only the demo needs it here

    zk = KazooClient(hosts=lab.zookeeper_hosts, timeout=5)
    zk.start(timeout=10)
    try:
        zk.ensure_path("/pgwarden-demo")
        zk.set("/pgwarden-demo", b"hello from the demo")
        value, _ = zk.get("/pgwarden-demo")
    finally:
        zk.stop()
        zk.close()
    click.echo(f"zookeeper {lab.zookeeper_hosts}: /pgwarden-demo = {value.decode()!r}")
    endpoint = lab.s3
    assert endpoint is not None
    client = s3.client(endpoint)
    client.put_object(Bucket=endpoint.bucket, Key="demo/hello.txt", Body=b"hello from the demo")
    body = client.get_object(Bucket=endpoint.bucket, Key="demo/hello.txt")["Body"].read()
    click.echo(f"s3 {endpoint.url}/{endpoint.bucket}/demo/hello.txt = {body.decode()!r}")


def run_demo(directory: Path) -> None:
    step(f"lab up in {directory}: ZooKeeper, S3 endpoint, PostgreSQL primary + 2 replicas")
    started = time.monotonic()
    lab = Lab.create(directory, LabSpec(zookeeper_nodes=1, s3=True, postgres_nodes=3))
    try:
        click.echo(f"ready in {time.monotonic() - started:.1f} s")
        _render_text(lab.status())

        step("ZooKeeper and S3 answer")
        show_services(lab)

        primary, replicas = lab.members[0], lab.members[1:]
        step(f"write 1000 rows on the primary ({primary.name})")
        with lab.connect(primary.name, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE demo_orders (id int PRIMARY KEY, placed_at timestamptz NOT NULL)"
            )
            conn.execute("INSERT INTO demo_orders SELECT g, now() FROM generate_series(1, 1000) g")
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            assert row is not None
            lsn = row[0]
        click.echo(f"committed at WAL position {lsn}")

        step("read them back on each replica")
        for replica in replicas:
            seconds = wait_replayed(lab, replica.name, lsn)
            with lab.connect(replica.name) as conn:
                counted = conn.execute("SELECT count(*), max(id) FROM demo_orders").fetchone()
            assert counted is not None
            click.echo(
                f"{replica.name}: {counted[0]} rows (max id {counted[1]}), "
                f"caught up {seconds * 1000:.0f} ms after the commit returned"
            )
            if counted[0] != 1000:
                raise LabError(f"{replica.name} shows {counted[0]} rows, expected 1000")

        step("status")
        _render_text(lab.status())
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
