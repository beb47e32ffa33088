"""Fixtures on the lab: real ZooKeeper and S3 per session, PostgreSQL clusters per test.

Everything a fixture starts is stopped in its finalizer, also when the test fails; network
cuts are removed by `lab.down()` (tagged with the lab id) and by the `network` fixture.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgwarden.lab import Lab, LabSpec, scratch_directory
from pgwarden.lab.faults import Cut

pytestmark = pytest.mark.integration


def _remove(path: Path) -> None:
    """Last resort after `down()`: a lab that failed to start keeps its files for reading."""
    if (path / "lab.json").exists():
        Lab.open(path).down()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def services() -> Iterator[Lab]:
    """ZooKeeper (standalone) and an S3 endpoint with a bucket, for the whole session."""
    directory = scratch_directory("services")
    lab = Lab.create(directory, LabSpec(zookeeper_nodes=1, s3=True, postgres_nodes=0))
    try:
        yield lab
    finally:
        lab.down()
        _remove(directory)


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., Lab]]:
    """Factory: `make_cluster(nodes=3)` starts PostgreSQL members torn down after the test."""
    labs: list[tuple[Lab, Path]] = []

    def factory(nodes: int = 3, **spec: object) -> Lab:
        directory = scratch_directory("cluster")
        options: dict[str, object] = {"zookeeper_nodes": 0, "s3": False} | spec
        lab = Lab.create(directory, LabSpec(postgres_nodes=nodes, **options))  # type: ignore[arg-type]
        labs.append((lab, directory))
        return lab

    yield factory
    for lab, directory in labs:
        try:
            lab.down()
        finally:
            _remove(directory)


@pytest.fixture
def network(services: Lab) -> Iterator[Callable[[str, str], Cut]]:
    """`network(a, b)` cuts two loopback addresses apart until the test ends."""
    cuts: list[tuple[Lab, Cut]] = []

    def cut(a: str, b: str, lab: Lab = services) -> Cut:
        handle = lab.cut(a, b)
        cuts.append((lab, handle))
        return handle

    yield cut
    for lab, handle in cuts:
        lab.heal(handle)
