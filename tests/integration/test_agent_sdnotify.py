"""A real agent tells systemd it is ready, what it decided, and that it stops, over the
datagram socket systemd would bind; PostgreSQL does not inherit the socket."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwarden.lab import Lab, LabSpec, scratch_directory

pytestmark = pytest.mark.integration


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    # A short directory of our own: socket paths are limited to 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="sdn-"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(directory / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(directory / "notify"))
    yield sock
    sock.close()
    shutil.rmtree(directory)


def messages_until(sock: socket.socket, field: str, timeout: float) -> list[list[str]]:
    """Datagrams (as field lists) up to and including the first with a field containing
    `field`."""
    received: list[list[str]] = []
    deadline = time.monotonic() + timeout
    while not any(field in f for message in received for f in message):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            received.append(sock.recv(4096).decode().split("\n"))
        except TimeoutError:
            pytest.fail(f"no {field} within {timeout} s; received {received}")
    return received


def test_agent_notifies_ready_status_and_stopping(notify_socket: socket.socket) -> None:
    lab = Lab.create(
        scratch_directory("sdnotify"),
        LabSpec(zookeeper_nodes=1, s3=False, postgres_nodes=1, agents=True),
    )
    try:
        ready = messages_until(notify_socket, "READY=1", timeout=60)
        # Ready once, first, with the first decision as the status line.
        assert ready[-1][0] == "READY=1"
        assert ready[-1][1].startswith("STATUS=")
        assert len(ready) == 1
        statuses = messages_until(notify_socket, "a healthy primary", timeout=60)
        assert all(not any(f == "READY=1" for f in m) for m in statuses)

        pid_file = lab.directory / "pg" / "node1" / "postmaster.pid"
        postmaster = int(pid_file.read_text().split("\n")[0])
        environ = Path(f"/proc/{postmaster}/environ").read_bytes().split(b"\0")
        assert not [e for e in environ if e.startswith(b"NOTIFY_SOCKET=")]
        assert [e for e in environ if e.startswith(b"LAB_PGWARDEN_ID=")]  # it is the agent's child
    finally:
        lab.down()
    stopping = messages_until(notify_socket, "STOPPING=1", timeout=30)
    assert stopping[-1][0] == "STOPPING=1"
    assert os.environ.get("NOTIFY_SOCKET")  # the test process's own is untouched
