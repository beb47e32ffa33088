"""postgres.allowed_networks: members on other hosts (and clients) may log in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pgwarden.agent.main import instance_spec
from pgwarden.config import parse_config
from pgwarden.errors import ConfigError
from pgwarden.postgres.conf import InstanceSpec, render_hba


def settings_with(networks: Any) -> Any:
    return parse_config(
        {
            "cluster": "main",
            "member": "node1",
            "postgres": {"bin_dir": "/usr/lib/postgresql/15/bin", "allowed_networks": networks},
            "dcs": {"hosts": ["zk1:2181"]},
            "storage": {"type": "fs", "directory": "/srv/pgwarden"},
        }
    )


def hba_rows(spec: InstanceSpec) -> list[list[str]]:
    return [line.split() for line in render_hba(spec).splitlines() if line and line[0] != "#"]


def test_networks_reach_pg_hba_for_clients_and_replication() -> None:
    settings = settings_with(["10.0.1.0/24", "fd00::5/64", "172.18.0.7"])
    assert settings.postgres.allowed_networks == ("10.0.1.0/24", "fd00::/64", "172.18.0.7/32")
    rows = hba_rows(instance_spec(settings, Path("/etc/pgwarden/pgwarden.yml")))
    for database in ("all", "replication"):
        allowed = [row[3] for row in rows if row[1] == database]
        assert allowed == ["127.0.0.0/8", "::1/128", "10.0.1.0/24", "fd00::/64", "172.18.0.7/32"]
    assert {row[4] for row in rows} == {"scram-sha-256"}


def test_without_networks_only_loopback_logs_in() -> None:
    rows = hba_rows(instance_spec(settings_with([]), None))
    assert {row[3] for row in rows} == {"127.0.0.0/8", "::1/128"}


@pytest.mark.parametrize("bad", ["10.0.1.0/33", "db-2", "all"])
def test_a_malformed_network_is_refused_with_its_path(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_with(["10.0.0.0/8", bad])
    (line,) = caught.value.lines()
    assert line.startswith("postgres.allowed_networks")
    assert repr(bad) in line
