"""The agent's API over HTTPS: clients that trust the CA get answers, others do not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pgwarden import peers
from pgwarden.agent.api import ApiServer
from pgwarden.lab.net import free_port

HOST = "127.0.0.11"


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "api.crt", directory / "api.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=pgwarden-test", "-addext", f"subjectAltName=IP:{HOST}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def https_api(tmp_path: Path):
    cert, key = self_signed(tmp_path)
    port = free_port(HOST)
    calls: list[dict] = []

    def reload(body: dict) -> tuple[int, dict]:
        calls.append(body)
        return 200, {"result": "configuration reloaded"}

    server = ApiServer(
        HOST,
        port,
        status=lambda: {"state": "running", "role": "primary", "holds_lease": True},
        live_status=lambda: {"state": "running"},
        cluster=lambda: {"history": []},
        control={"/reload": reload},
        token="secret-token",
        tls=(str(cert), str(key)),
    )
    server.start()
    try:
        yield f"https://{HOST}:{port}", cert, calls
    finally:
        server.stop()
        peers.configure_tls(None)


def test_https_api_answers_clients_that_trust_its_ca(https_api) -> None:
    url, cert, calls = https_api
    peers.configure_tls(cert)
    assert peers.request_json(f"{url}/primary")[0] == 200
    assert peers.request_json(f"{url}/reload", body={}, token="wrong")[0] == 401
    code, answer = peers.request_json(f"{url}/reload", body={}, token="secret-token")
    assert (code, answer) == (200, {"result": "configuration reloaded"})
    assert calls == [{}]


def test_https_api_refuses_untrusting_and_plain_clients(https_api) -> None:
    url, _cert, calls = https_api
    peers.configure_tls(None)  # system CAs only: the self-signed certificate fails
    assert peers.request_json(f"{url}/primary")[0] == 0
    plain = url.replace("https://", "http://")
    assert peers.request_json(f"{plain}/primary")[0] == 0
    assert calls == []
