"""sd_notify against a real AF_UNIX datagram socket, as systemd binds it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from pgwarden.agent.main import Agent
from pgwarden.agent.sdnotify import STATUS_MAX, Notifier


def _receive(sock: socket.socket) -> list[str]:
    sock.settimeout(2.0)
    return sock.recv(4096).decode().split("\n")


@pytest.fixture
def path_socket() -> Iterator[tuple[socket.socket, str]]:
    # A short directory of our own: pytest's tmp_path can exceed the 107-byte limit.
    directory = tempfile.mkdtemp(prefix="sdn-")
    path = Path(directory) / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield sock, str(path)
    sock.close()
    path.unlink()
    os.rmdir(directory)


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    name = f"pgwarden-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    yield sock, "@" + name
    sock.close()


def test_ready_reaches_a_path_socket_with_its_status(
    path_socket: tuple[socket.socket, str],
) -> None:
    sock, value = path_socket
    notifier = Notifier.claim({"NOTIFY_SOCKET": value})
    assert notifier.ready("I am db-1, the leader")
    assert _receive(sock) == ["READY=1", "STATUS=I am db-1, the leader"]


def test_abstract_socket_names_start_with_at(abstract_socket: tuple[socket.socket, str]) -> None:
    sock, value = abstract_socket
    assert Notifier.claim({"NOTIFY_SOCKET": value}).stopping()
    assert _receive(sock) == ["STOPPING=1"]


def test_status_is_one_bounded_line(path_socket: tuple[socket.socket, str]) -> None:
    sock, value = path_socket
    assert Notifier.claim({"NOTIFY_SOCKET": value}).status("two\nlines  " + "x" * 1000)
    (field,) = _receive(sock)
    assert field.startswith("STATUS=two lines xxx")
    assert field.endswith("...")
    assert len(field) == len("STATUS=") + STATUS_MAX


def test_children_do_not_inherit_the_socket(
    path_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL built with systemd support would notify on its own otherwise.
    sock, value = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    notifier = Notifier.claim()
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('NOTIFY_SOCKET'))"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert child.stdout.strip() == "None"
    assert notifier.ready()
    assert _receive(sock) == ["READY=1"]


def test_outside_systemd_nothing_is_sent() -> None:
    assert not Notifier.claim({}).ready()
    assert not Notifier.claim({"NOTIFY_SOCKET": "vsock:2:1234"}).ready()


def test_a_socket_nobody_listens_on_is_not_fatal(tmp_path: Path) -> None:
    assert not Notifier.claim({"NOTIFY_SOCKET": str(tmp_path / "absent")}).ready()


def test_agent_is_ready_once_then_reports_changed_decisions(
    path_socket: tuple[socket.socket, str],
) -> None:
    sock, value = path_socket
    agent = SimpleNamespace(
        systemd=Notifier.claim({"NOTIFY_SOCKET": value}),
        _notified_ready=False,
        _notified_reason="",
    )
    for reason in ("bootstrapped db-1", "bootstrapped db-1", "I am db-1, the leader"):
        Agent._ticked(agent, SimpleNamespace(reason=reason))  # type: ignore[arg-type]
    assert _receive(sock) == ["READY=1", "STATUS=bootstrapped db-1"]
    # The repeated reason sent nothing; the next datagram is the change.
    assert _receive(sock) == ["STATUS=I am db-1, the leader"]
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(4096)
