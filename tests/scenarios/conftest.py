"""Multi-member failure scenarios: real agents, PostgreSQL and ZooKeeper, a writer that
records every acknowledged commit, and a checker run afterwards."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from pgwarden.lab import Lab, LabSpec, scratch_directory
from pgwarden.lab.ha import HaCluster as Cluster
from pgwarden.lab.writer import Writer


@pytest.fixture
def make_ha_cluster() -> Iterator[Callable[..., Cluster]]:
    labs: list[Lab] = []

    def factory(
        nodes: int = 3,
        zookeeper_nodes: int = 1,
        synchronous_mode: str = "on",
        agent_overrides: dict[str, object] | None = None,
        agent_storage: str = "fs",
    ) -> Cluster:
        lab = Lab.create(
            scratch_directory("ha"),
            LabSpec(
                zookeeper_nodes=zookeeper_nodes,
                s3=agent_storage == "s3",
                postgres_nodes=nodes,
                agents=True,
                synchronous_mode=synchronous_mode,
                agent_overrides=agent_overrides or {},
                agent_storage=agent_storage,
            ),
        )
        labs.append(lab)
        return Cluster(lab)

    yield factory
    keep = os.environ.get("PGWARDEN_KEEP_LABS") == "1"
    for lab in labs:
        # PGWARDEN_KEEP_LABS=1 keeps logs and data of each lab for a post-mortem.
        lab.down(remove_files=not keep)


@pytest.fixture
def make_writer() -> Iterator[Callable[[Cluster], Writer]]:
    writers: list[Writer] = []

    def factory(cluster: Cluster) -> Writer:
        primary = cluster.wait_converged()
        Writer.prepare(cluster.conninfo(primary))
        writer = Writer(cluster.names(), cluster.conninfo)
        writer.start()
        writers.append(writer)
        return writer

    yield factory
    for writer in writers:
        writer.stop()
