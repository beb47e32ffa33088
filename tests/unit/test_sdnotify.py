"""sd_notify against a real AF_UNIX datagram socket, as systemd binds it."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from pgwarden.agent import sdnotify
from pgwarden.agent.main import Agent


def _receive(sock: socket.socket) -> list[str]:
    sock.settimeout(2.0)
    return sock.recv(4096).decode().split("\n")


@pytest.fixture
def path_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    # A short directory of our own: pytest's tmp_path can exceed the 107-byte limit.
    directory = tempfile.mkdtemp(prefix="sdn-")
    path = Path(directory) / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()
    path.unlink()
    os.rmdir(directory)


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"pgwarden-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield sock
    sock.close()


def test_ready_reaches_a_path_socket_with_its_status(path_socket: socket.socket) -> None:
    assert sdnotify.ready("I am db-1, the leader")
    assert _receive(path_socket) == ["READY=1", "STATUS=I am db-1, the leader"]


def test_abstract_socket_names_start_with_at(abstract_socket: socket.socket) -> None:
    assert sdnotify.stopping()
    assert _receive(abstract_socket) == ["STOPPING=1"]


def test_status_is_one_bounded_line(path_socket: socket.socket) -> None:
    assert sdnotify.status("two\nlines  " + "x" * 1000)
    (field,) = _receive(path_socket)
    assert field.startswith("STATUS=two lines xxx")
    assert field.endswith("...")
    assert len(field) == len("STATUS=") + sdnotify.STATUS_MAX


def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.ready()
    assert not sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"})


def test_a_socket_nobody_listens_on_is_not_fatal(tmp_path: Path) -> None:
    gone = {"NOTIFY_SOCKET": str(tmp_path / "absent")}
    assert not sdnotify.notify("READY=1", environ=gone)


def test_agent_is_ready_once_then_reports_changed_decisions(path_socket: socket.socket) -> None:
    agent = SimpleNamespace(_notified_ready=False, _notified_reason="")
    for reason in ("bootstrapped db-1", "bootstrapped db-1", "I am db-1, the leader"):
        Agent._ticked(agent, SimpleNamespace(reason=reason))  # type: ignore[arg-type]
    assert _receive(path_socket) == ["READY=1", "STATUS=bootstrapped db-1"]
    # The repeated reason sent nothing; the next datagram is the change.
    assert _receive(path_socket) == ["STATUS=I am db-1, the leader"]
    path_socket.settimeout(0.05)
    with pytest.raises(TimeoutError):
        path_socket.recv(4096)
