"""`pgwarden lab status`: what each lab service is, where, whether it runs, its role."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

from pgwarden.lab import agents, faults, s3, zookeeper
from pgwarden.lab import postgres as pg
from pgwarden.lab.procs import is_running

if TYPE_CHECKING:
    from pgwarden.lab.lab import Lab


def lab_status(lab: Lab) -> dict[str, Any]:
    """Every service: what it is, where it listens, whether it runs, and its role."""
    services: list[dict[str, Any]] = []
    for node in lab.zookeeper_nodes:
        services.append(
            _service(lab, node.process_name, "zookeeper", node.address)
            | {"role": zookeeper.mode(node) or "down"}
        )
    if lab.s3 is not None:
        services.append(
            _service(lab, s3.PROCESS_NAME, "s3", lab.s3.url) | {"bucket": lab.s3.bucket}
        )
    for m in lab.members:
        if lab.state.get("agents"):
            entry = _service(lab, agents.process_name(m.name), "agent", lab.agent_url(m.name))
            pid = lab.postmaster_pid(m.name)
            entry |= {
                "member": m.name,
                "postgres": f"{m.host}:{m.port}",
                "postmaster_pid": pid,
                "role": _pg_role(lab, m) if pid else "down",
            }
        else:
            entry = _service(lab, m.process_name, "postgres", f"{m.host}:{m.port}")
            entry |= {
                "member": m.name,
                "role": _pg_role(lab, m) if entry["running"] else "down",
            }
        services.append(entry)
    return {
        "lab_id": lab.lab_id,
        "directory": str(lab.directory),
        "zookeeper_hosts": lab.zookeeper_hosts,
        "s3_endpoint": lab.s3.url if lab.s3 else None,
        "services": services,
        "network_cuts": faults.lab_rules(lab.lab_id),
    }


def _service(lab: Lab, name: str, kind: str, address: str) -> dict[str, Any]:
    record = lab.registry.get(name)
    running = record is not None and is_running(record)
    return {
        "name": name,
        "kind": kind,
        "address": address,
        "pid": record.pid if record else None,
        "running": running,
        "log": record.log if record else None,
    }


def _pg_role(lab: Lab, member: pg.PgMember) -> str:
    try:
        with psycopg.connect(member.conninfo(lab.credentials), connect_timeout=2) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error:
        return "not answering"
    return "replica" if row and row[0] else "primary"
