"""`pgwarden wal-push`/`wal-fetch` fast path: ask the agent's socket, else do it directly.

The agent here is a small real unix socket server speaking the client's protocol (one line
of tab-separated fields each way); what it answers is set per test.
"""

from __future__ import annotations

import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwarden.invocation import wal_client_command, wal_restore_command
from pgwarden.wal import client

SEGMENT = "000000010000000000000003"


class FakeAgent(socketserver.ThreadingUnixStreamServer):
    """Records each request line's fields and answers with `reply` (raw bytes, so garbage is
    possible). `silent` makes it accept and then say nothing until the test ends."""

    daemon_threads = True

    def __init__(self, path: str) -> None:
        self.requests: list[list[str]] = []
        self.reply = b"ok\n"
        self.silent = False
        self.release = threading.Event()
        super().__init__(path, _Handler)

    def answer(self, *fields: str) -> None:
        self.reply = "\t".join(fields).encode() + b"\n"


class _Handler(socketserver.StreamRequestHandler):
    server: FakeAgent

    def handle(self) -> None:
        line = self.rfile.readline().decode()
        assert line.endswith("\n")
        self.server.requests.append(line[:-1].split("\t"))
        if self.server.silent:
            self.server.release.wait(10)
            return
        self.wfile.write(self.server.reply)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # A unix socket path must stay under ~104 bytes; pytest's tmp_path can be longer.
    directory = Path(tempfile.mkdtemp(prefix="pgw-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def agent(short_dir: Path) -> Iterator[FakeAgent]:
    server = FakeAgent(str(short_dir / "wal.sock"))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def direct(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """Calls of the full CLI (the slow path); it answers with exit code 7 to be recognised."""
    calls: list[tuple[str, list[str]]] = []

    def fake_direct(command: str, argv: list[str]) -> int:
        calls.append((command, list(argv)))
        return 7

    monkeypatch.setattr(client, "_direct", fake_direct)
    return calls


def sock(agent: FakeAgent) -> str:
    return str(agent.server_address)


# --- the agent answers ------------------------------------------------------------------


def test_push_stored_by_the_agent_succeeds_and_names_the_file_by_absolute_path(
    agent: FakeAgent,
    direct: list[tuple[str, list[str]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert client.run("wal-push", ["--socket", sock(agent), f"pg_wal/{SEGMENT}"]) == 0
    assert agent.requests == [["push", str(tmp_path / "pg_wal" / SEGMENT)]]
    assert direct == []
    assert capsys.readouterr() == ("", "")


def test_fetch_served_by_the_agent_succeeds_with_an_absolute_destination(
    agent: FakeAgent,
    direct: list[tuple[str, list[str]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["-c", "/etc/pgwarden.yaml", "--socket", sock(agent), SEGMENT, "pg_wal/RECOVERYXLOG"]
    assert client.run("wal-fetch", argv) == 0
    assert agent.requests == [["fetch", SEGMENT, str(tmp_path / "pg_wal" / "RECOVERYXLOG")]]
    assert direct == []


def test_a_segment_not_archived_exits_1_without_a_message(
    agent: FakeAgent, direct: list[tuple[str, list[str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    agent.answer("missing")
    assert client.run("wal-fetch", ["--socket", sock(agent), SEGMENT, "/x/RECOVERYXLOG"]) == 1
    assert capsys.readouterr() == ("", "")
    assert direct == []


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (["error", "storage refused the upload"], "storage refused the upload"),
        (["error", ""], "the agent failed without a reason"),
        (["error"], "the agent failed without a reason"),
    ],
)
def test_an_agent_error_exits_1_with_its_sentence_on_stderr(
    agent: FakeAgent,
    direct: list[tuple[str, list[str]]],
    capsys: pytest.CaptureFixture[str],
    answer: list[str],
    message: str,
) -> None:
    agent.answer(*answer)
    assert client.run("wal-push", ["--socket", sock(agent), f"/pg_wal/{SEGMENT}"]) == 1
    assert capsys.readouterr() == ("", f"error: {message}\n")
    assert direct == []


# --- falling back to the full CLI ---------------------------------------------------------


@pytest.mark.parametrize("command", ["wal-push", "wal-fetch"])
def test_an_unavailable_answer_falls_back_to_the_direct_path(
    agent: FakeAgent, direct: list[tuple[str, list[str]]], command: str
) -> None:
    agent.answer("unavailable")
    positional = [f"/pg_wal/{SEGMENT}"] if command == "wal-push" else [SEGMENT, "/pg_wal/X"]
    argv = ["--socket", sock(agent), *positional]
    assert client.run(command, argv) == 7
    assert direct == [(command, argv)]
    assert len(agent.requests) == 1


def test_a_missing_socket_file_falls_back_to_the_direct_path(
    short_dir: Path, direct: list[tuple[str, list[str]]]
) -> None:
    argv = ["--socket", str(short_dir / "absent.sock"), f"/pg_wal/{SEGMENT}"]
    assert client.run("wal-push", argv) == 7
    assert direct == [("wal-push", argv)]


def test_a_socket_nobody_listens_on_falls_back_to_the_direct_path(
    short_dir: Path, direct: list[tuple[str, list[str]]]
) -> None:
    # What a killed agent leaves behind: the socket file, no listener.
    path = str(short_dir / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(path)
    argv = ["--socket", path, SEGMENT, "/pg_wal/RECOVERYXLOG"]
    assert client.run("wal-fetch", argv) == 7
    assert direct == [("wal-fetch", argv)]


@pytest.mark.parametrize(
    "reply",
    [b"", b"sure\n", b"ok", b"OK\n", b'{"status": "ok"}\n'],
    ids=["closed", "unknown-word", "cut-off", "uppercase", "json-of-an-older-agent"],
)
def test_an_answer_the_client_does_not_know_falls_back_to_the_direct_path(
    agent: FakeAgent, direct: list[tuple[str, list[str]]], reply: bytes
) -> None:
    agent.reply = reply
    argv = ["--socket", sock(agent), f"/pg_wal/{SEGMENT}"]
    assert client.run("wal-push", argv) == 7
    assert direct == [("wal-push", argv)]


@pytest.mark.parametrize(
    ("command", "positional"),
    [
        ("wal-push", [f"/pg wal\t2/{SEGMENT}"]),
        ("wal-fetch", [SEGMENT, "/pg_wal/RECOVERY\nXLOG"]),
    ],
)
def test_a_path_the_protocol_cannot_carry_goes_direct_without_asking(
    agent: FakeAgent, direct: list[tuple[str, list[str]]], command: str, positional: list[str]
) -> None:
    argv = ["--socket", sock(agent), *positional]
    assert client.run(command, argv) == 7
    assert direct == [(command, argv)]
    assert agent.requests == []


def test_an_agent_that_never_answers_is_bypassed_after_the_answer_timeout(
    agent: FakeAgent, direct: list[tuple[str, list[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "ANSWER_TIMEOUT", 0.3)
    agent.silent = True
    argv = ["--socket", sock(agent), f"/pg_wal/{SEGMENT}"]
    started = time.monotonic()
    assert client.run("wal-push", argv) == 7
    elapsed = time.monotonic() - started
    assert direct == [("wal-push", argv)]
    assert 0.25 <= elapsed < 2.0
    assert len(agent.requests) == 1


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("wal-push", [f"/pg_wal/{SEGMENT}"]),  # no --socket: nothing to ask
        ("wal-push", ["-c", "/etc/pgwarden.yaml", f"/pg_wal/{SEGMENT}"]),
        ("wal-push", ["--help"]),
        ("wal-push", ["--socket"]),
        ("wal-push", ["-c"]),
        ("wal-push", ["--socket", "SOCK", f"/pg_wal/{SEGMENT}", "extra"]),
        ("wal-push", ["--socket=SOCK", f"/pg_wal/{SEGMENT}"]),
        ("wal-push", ["--socket", "SOCK", "-v", f"/pg_wal/{SEGMENT}"]),
        ("wal-fetch", ["--socket", "SOCK", SEGMENT]),
        ("wal-fetch", ["--socket", "SOCK"]),
    ],
)
def test_unusual_arguments_go_to_the_full_cli_untouched(
    agent: FakeAgent, direct: list[tuple[str, list[str]]], command: str, argv: list[str]
) -> None:
    argv = [sock(agent) if word == "SOCK" else word for word in argv]
    assert client.run(command, argv) == 7
    assert direct == [(command, argv)]
    assert agent.requests == []


# --- the real process -----------------------------------------------------------------


HEAVY = (
    # what the full CLI loads
    "click", "pydantic", "boto3", "botocore", "zstandard", "cryptography", "yaml", "structlog",
    # what the module's docstring says it avoids on purpose
    "json", "re", "enum", "socket", "selectors",
)  # fmt: skip


def test_the_client_module_imports_nothing_heavy(tmp_path: Path) -> None:
    code = (
        "import pgwarden.wal.client, sys; "
        "print(sorted(m for m in sys.modules if m.startswith('pgwarden'))); "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        cwd=tmp_path,
    ).stdout.splitlines()
    assert out == ["['pgwarden', 'pgwarden.wal', 'pgwarden.wal.client']", "[]"]


def test_the_pgwarden_program_pushes_through_the_agent(agent: FakeAgent, tmp_path: Path) -> None:
    wal = tmp_path / SEGMENT
    wal.write_bytes(b"wal")
    result = subprocess.run(
        [sys.executable, "-m", "pgwarden", "wal-push", "--socket", sock(agent), str(wal)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert agent.requests == [["push", str(wal)]]


def test_the_pgwarden_program_reports_a_missing_segment_with_exit_1(agent: FakeAgent) -> None:
    agent.answer("missing")
    result = subprocess.run(
        [sys.executable, "-m", "pgwarden", "wal-fetch", "--socket", sock(agent), SEGMENT, "/x/Y"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert (result.returncode, result.stdout, result.stderr) == (1, "", "")


def _as_postgres_runs_it(command: str) -> subprocess.CompletedProcess[str]:
    """`command` (archive_command or restore_command with %f/%p filled in) through a shell."""
    return subprocess.run(
        ["/bin/sh", "-c", command], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_agents_archive_command_asks_the_agent_without_site_packages(
    agent: FakeAgent, tmp_path: Path
) -> None:
    wal = tmp_path / SEGMENT
    wal.write_bytes(b"wal")
    command = wal_client_command(tmp_path / "pgwarden.yml", "wal-push", sock(agent), str(wal))
    assert " -I -S " in command  # no site-packages, no runpy: half the start-up
    result = _as_postgres_runs_it(command)
    assert (result.returncode, result.stderr) == (0, "")
    assert agent.requests == [["push", str(wal)]]


def test_the_agents_restore_command_falls_back_to_the_full_cli_without_an_agent(
    tmp_path: Path,
) -> None:
    # No agent listens: the script hands over to `python -m pgwarden`, which reads the
    # configuration and answers with its own sentence (the file does not exist).
    config = tmp_path / "missing.yml"
    dest = tmp_path / "RECOVERYXLOG"
    command = wal_client_command(
        config, "wal-fetch", str(tmp_path / "none.sock"), SEGMENT, str(dest)
    )
    result = _as_postgres_runs_it(command)
    assert result.returncode != 0
    assert str(config) in result.stderr
    assert not dest.exists()


def test_the_agents_restore_command_takes_a_prefetched_segment_without_asking(
    agent: FakeAgent, tmp_path: Path
) -> None:
    spool = tmp_path / "data.wal-spool"
    spool.mkdir()
    (spool / SEGMENT).write_bytes(b"prefetched")
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    command = wal_restore_command(tmp_path / "pgwarden.yml", sock(agent), spool)
    filled = command.replace("%f", SEGMENT).replace("%p", str(pg_wal / "RECOVERYXLOG"))
    result = _as_postgres_runs_it(filled)
    assert (result.returncode, result.stderr) == (0, "")
    assert (pg_wal / "RECOVERYXLOG").read_bytes() == b"prefetched"
    assert not (spool / SEGMENT).exists()
    assert agent.requests == []
    # Not in the spool: the client asks the agent, which has it nowhere either.
    agent.answer("missing")
    result = _as_postgres_runs_it(filled)
    assert (result.returncode, result.stderr) == (1, "")
    assert agent.requests == [["fetch", SEGMENT, str(pg_wal / "RECOVERYXLOG")]]
