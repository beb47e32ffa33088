"""`pgwarden lab up|status|down`: a local sandbox cluster on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pgwarden.cli.render import emit_json, output_option
from pgwarden.lab import Lab, LabSpec

dir_option = click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory holding everything the lab starts and writes.",
)


@click.group("lab")
def lab_group() -> None:
    """Run a sandbox: ZooKeeper, an S3 endpoint and PostgreSQL on loopback.

    \b
    Exit codes: 0 success; 1 a service failed to start or stop (the message
    ends with the tail of its log), or DIR holds no lab.
    """


@lab_group.command("up")
@dir_option
@click.option(
    "--nodes", default=3, show_default=True, help="PostgreSQL members: a primary and N-1 replicas."
)
@click.option(
    "--zk-nodes",
    type=click.IntRange(0, 3),
    default=1,
    show_default=True,
    help="ZooKeeper servers: 1 (standalone) or 3 (ensemble); 0 for none.",
)
@click.option("--no-s3", is_flag=True, help="Do not start the S3 endpoint.")
@click.option(
    "--agents/--no-agents",
    default=True,
    show_default=True,
    help="Run a pgwarden agent per member (they bootstrap the cluster), or plain "
    "PostgreSQL with streaming replicas.",
)
@click.option(
    "--sync",
    "synchronous_mode",
    type=click.Choice(["off", "on", "strict"]),
    default="off",
    show_default=True,
    help="The agents' synchronous_mode.",
)
@click.option("--show-secrets", is_flag=True, help="Include the lab's generated passwords.")
@output_option
def lab_up(
    directory: Path,
    nodes: int,
    zk_nodes: int,
    no_s3: bool,
    agents: bool,
    synchronous_mode: str,
    show_secrets: bool,
    output: str,
) -> None:
    """Start a lab in DIR (new or empty) and wait until every service is ready."""
    spec = LabSpec(
        zookeeper_nodes=zk_nodes,
        s3=not no_s3,
        postgres_nodes=nodes,
        agents=agents and nodes > 0,
        synchronous_mode=synchronous_mode,
    )
    lab = Lab.create(directory, spec)
    _show(lab, show_secrets, output)


@lab_group.command("status")
@dir_option
@click.option("--show-secrets", is_flag=True, help="Include the lab's generated passwords.")
@output_option
def lab_status(directory: Path, show_secrets: bool, output: str) -> None:
    """Show each service of the lab in DIR: address, PID, running, role."""
    _show(Lab.open(directory), show_secrets, output)


@lab_group.command("down")
@dir_option
@click.option("--keep-files", is_flag=True, help="Stop everything but keep DIR (logs, data).")
def lab_down(directory: Path, keep_files: bool) -> None:
    """Stop every process of the lab in DIR, remove its network cuts, delete DIR.

    Works from DIR alone, also when the process that ran `lab up` is gone.
    """
    Lab.open(directory).down(remove_files=not keep_files)
    click.echo(f"lab in {directory} is down")


def _show(lab: Lab, show_secrets: bool, output: str) -> None:
    status = lab.status()
    if lab.members:
        creds = lab.credentials
        secret = creds.superuser_password if show_secrets else "********"
        status["postgres"] = {
            "superuser": "postgres",
            "password": secret,
            "members": {m.name: m.dsn() for m in lab.members},
        }
    if output == "json":
        emit_json(status)
        return
    _render_text(status)


def _render_text(status: dict[str, Any]) -> None:
    click.echo(f"lab {status['lab_id']} in {status['directory']}")
    rows = [("SERVICE", "ADDRESS", "PID", "STATE", "ROLE")]
    for svc in status["services"]:
        rows.append(
            (
                svc.get("member") or svc["name"],
                svc["address"],
                str(svc["pid"] or "-"),
                "running" if svc["running"] else "stopped",
                str(svc.get("role", "")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if status["zookeeper_hosts"]:
        click.echo(f"zookeeper: {status['zookeeper_hosts']}")
    if status["s3_endpoint"]:
        click.echo(f"s3: {status['s3_endpoint']}")
    if "postgres" in status:
        click.echo(f"postgres password: {status['postgres']['password']}")
    for rule in status["network_cuts"]:
        click.echo(f"network cut: {rule}")
