"""docker-compose.yml, its Dockerfile and the files they mount, checked statically (no
Docker engine runs here): every pgwarden command is one the CLI accepts, every agent URL
is one the agent's API serves and means what HAProxy relies on, host ports are distinct,
and each node's configuration passes `pgwarden config check`."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from cli_check import resolve
from pgwarden.agent.api import ApiServer
from pgwarden.config import load_config

REPO = Path(__file__).parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
NODES = ("pg1", "pg2", "pg3")
HAPROXY_CFG = (REPO / "deploy" / "haproxy" / "haproxy.cfg").read_text()
PGWARDEN = Path(sys.executable).with_name("pgwarden")


def mounts(service: str) -> dict[str, Path]:
    """Container path -> file in this repository, for bind mounts of repository files."""
    found = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            found[target] = REPO / source
    return found


def node_settings(node: str) -> Any:
    return load_config(mounts(node)["/etc/pgwarden/pgwarden.yml"])


def test_the_file_has_the_issue_s_services() -> None:
    assert set(SERVICES) == {
        "zk1", "zk2", "zk3", "minio", "minio-bucket", "pg1", "pg2", "pg3", "haproxy",
    }  # fmt: skip
    for node in NODES:
        assert SERVICES[node]["build"] == "."
        assert SERVICES[node]["hostname"] == node


def test_bind_mounted_files_exist() -> None:
    for service in SERVICES:
        for target, source in mounts(service).items():
            assert source.is_file(), f"{service} mounts {source} at {target}"


def test_host_ports_do_not_clash() -> None:
    seen: dict[int, str] = {}
    for name, service in SERVICES.items():
        for mapping in service.get("ports", []):
            host = int(str(mapping).split(":")[0])
            assert host not in seen, f"{name} and {seen.get(host)} both publish port {host}"
            seen[host] = name
    assert {5000, 5001, 7000} <= set(seen)


def test_node_commands_are_real_pgwarden_commands() -> None:
    for node in NODES:
        command = SERVICES[node]["command"]
        assert command[0] == "pgwarden"
        assert resolve(command[1:]) == ["pgwarden", "agent"]
        assert command[command.index("-c") + 1] in mounts(node)
    dockerfile = (REPO / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert cmd
    assert resolve(json.loads(cmd.group(1))[1:]) == ["pgwarden", "agent"]


def test_dockerfile_copies_files_that_exist() -> None:
    copies = re.findall(r"^COPY (.+) \S+$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert copies
    for sources in copies:
        for source in sources.split():
            assert (REPO / source).exists(), source


@pytest.mark.parametrize("node", NODES)
def test_mounted_configuration_passes_config_check(node: str) -> None:
    config = mounts(node)["/etc/pgwarden/pgwarden.yml"]
    result = subprocess.run(
        [str(PGWARDEN), "config", "check", str(config)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr


@pytest.mark.parametrize("node", NODES)
def test_configuration_matches_the_compose_network(node: str) -> None:
    settings = node_settings(node)
    assert settings.member == node
    assert settings.postgres.listen_address == node
    assert settings.api.listen == f"{node}:8008"
    assert sorted(settings.dcs.hosts) == [f"zk{k}:2181" for k in (1, 2, 3)]
    # pg_hba.conf admits the compose network, so members clone and stream from each other.
    subnets = [c["subnet"] for c in COMPOSE["networks"]["default"]["ipam"]["config"]]
    assert list(settings.postgres.allowed_networks) == subnets
    storage = settings.storage
    assert urlsplit(storage.endpoint_url).hostname == "minio"
    assert f"demo/{storage.bucket}" in " ".join(SERVICES["minio-bucket"]["command"])
    mounted = mounts(node)
    for path in (settings.api.token_file, storage.credentials_file):
        assert str(path) in mounted, f"{path} is named by the configuration but not mounted"
    credentials = mounted[str(storage.credentials_file)].read_text()
    minio = SERVICES["minio"]["environment"]
    assert f"aws_access_key_id = {minio['MINIO_ROOT_USER']}" in credentials
    assert f"aws_secret_access_key = {minio['MINIO_ROOT_PASSWORD']}" in credentials


def test_haproxy_checks_each_node_s_agent() -> None:
    for backend in ("primary", "replicas"):
        section = HAPROXY_CFG.split(f"listen {backend}\n")[1].split("\nlisten ")[0]
        servers = re.findall(r"^\s+server (\S+) (\S+):(\d+) check port (\d+)", section, re.M)
        assert [name for name, *_ in servers] == list(NODES)
        for name, host, pg_port, api_port in servers:
            settings = node_settings(name)
            assert host == name
            assert int(pg_port) == settings.postgres.port
            assert api_port == settings.api.listen.rsplit(":", 1)[1]


# --- the agent's real HTTP API, with a stubbed member state -------------------------------


@pytest.fixture
def agent_api() -> Iterator[tuple[ApiServer, dict[str, Any]]]:
    state: dict[str, Any] = {}
    server = ApiServer(
        "127.0.0.1",
        0,
        status=lambda: dict(state),
        live_status=lambda: dict(state),
        cluster=lambda: {"history": []},
    )
    server.start()
    yield server, state
    server.stop()


def get(server: ApiServer, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


PRIMARY = {"state": "running", "role": "primary", "holds_lease": True, "lag_bytes": 0}
REPLICA = {"state": "running", "role": "replica", "holds_lease": False, "lag_bytes": 4096}


def haproxy_check(backend: str) -> str:
    section = HAPROXY_CFG.split(f"listen {backend}\n")[1].split("\nlisten ")[0]
    uri = re.search(r"http-check send meth GET uri (\S+)", section)
    assert uri and "http-check expect status 200" in section
    return uri.group(1)


def test_haproxy_sends_writes_to_the_primary_and_reads_to_replicas(
    agent_api: tuple[ApiServer, dict[str, Any]],
) -> None:
    server, state = agent_api
    writes, reads = haproxy_check("primary"), haproxy_check("replicas")
    assert urlsplit(writes).path == "/primary"
    assert urlsplit(reads).path == "/replica"
    state.update(PRIMARY, ticked_at=time.monotonic(), loop_wait=1)
    assert (get(server, writes), get(server, reads)) == (200, 503)
    state.update(REPLICA)
    assert (get(server, writes), get(server, reads)) == (503, 200)
    # A replica further behind than the lag HAProxy allows takes no reads.
    state.update(lag_bytes=10**9)
    assert get(server, reads) == 503


def healthcheck_urls() -> Iterator[tuple[str, str]]:
    for name, service in SERVICES.items():
        test = service.get("healthcheck", {}).get("test", [])
        words = shlex.split(test[1]) if test[:1] == ["CMD-SHELL"] else test[1:]
        for word in words:
            if word.startswith("http://"):
                yield name, word


def test_node_health_checks_ask_their_own_agent_a_real_endpoint(
    agent_api: tuple[ApiServer, dict[str, Any]],
) -> None:
    server, state = agent_api
    state.update(REPLICA, ticked_at=time.monotonic(), loop_wait=1)
    checked = dict(healthcheck_urls())
    assert set(checked) == set(NODES)
    for node, url in checked.items():
        parts = urlsplit(url)
        assert f"{parts.hostname}:{parts.port}" == node_settings(node).api.listen
        assert get(server, parts.path) == 200, url
    # The checker itself tells a missing route from an unhealthy one.
    assert get(server, "/no-such-endpoint") == 404
