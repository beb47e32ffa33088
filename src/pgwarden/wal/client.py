"""The hot path of `pgwarden wal-push %p` and `pgwarden wal-fetch %f %p`: standard library only.

PostgreSQL runs archive_command once per WAL segment and restore_command once per segment
it replays, so their start-up cost is paid thousands of times an hour. This module imports
nothing but the standard library (about 15 ms from process start) and asks the local
agent over its unix socket; the agent's archiver usually stored the segment before
PostgreSQL asked, and its fetcher prefetched the next ones. When no agent answers (no
`--socket`, nobody listening, the agent restarting), the full CLI does the work directly
against storage: slower, still correct.

Protocol: one line each way, tab-separated fields (no JSON: its import, with `re` and
`enum`, would cost more than the rest of the client together).
    push<TAB>/abs/pg_wal/0000000100000000000000A1
    fetch<TAB>0000000100000000000000A2<TAB>/abs/pg_wal/RECOVERYXLOG
    -> ok | missing | error<TAB>sentence | unavailable (the agent cannot serve it: go direct)
"""

from __future__ import annotations

import _socket  # the C module: socket.py would import enum and selectors
import os
import sys

# restore_command: exit 1 tells PostgreSQL the file is not archived.
EXIT_OK, EXIT_FAILED = 0, 1
CONNECT_TIMEOUT = 1.0
# A push may wait for an upload in flight. An agent silent this long (frozen, stuck) is
# bypassed: the direct path uploads again, which is safe (pushes are idempotent).
ANSWER_TIMEOUT = 30.0


class _NoAgent(Exception):  # noqa: N818 - internal signal, never escapes
    pass


def _parse(argv: list[str]) -> tuple[str | None, str | None, list[str]] | None:
    """(--socket, -c, positional) from `argv`, or None for anything unusual (help, typos):
    the full CLI then answers with its usual messages."""
    socket_path = config = None
    positional: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "--socket":
            socket_path = next(words, None)
            if socket_path is None:
                return None
        elif word in ("-c", "--config"):
            config = next(words, None)
            if config is None:
                return None
        elif word.startswith("-"):
            return None
        else:
            positional.append(word)
    return socket_path, config, positional


def ask(socket_path: str, request: list[str]) -> list[str]:
    """One request to the agent, as its fields; _NoAgent if nobody answers usefully."""
    if any("\t" in field or "\n" in field for field in request):
        raise _NoAgent  # not expressible in the protocol: the direct path handles it
    try:
        conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            conn.settimeout(CONNECT_TIMEOUT)
            conn.connect(socket_path)
            conn.settimeout(ANSWER_TIMEOUT)
            conn.sendall(("\t".join(request) + "\n").encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            conn.close()
    except OSError as exc:
        raise _NoAgent from exc
    answer = data.decode(errors="replace").rstrip("\n").split("\t")
    if not data.endswith(b"\n") or answer[0] not in ("ok", "missing", "error"):
        raise _NoAgent
    return answer


def answering(socket_path: str) -> bool:
    """Whether something accepts connections on the WAL socket at `socket_path`."""
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        conn.settimeout(CONNECT_TIMEOUT)
        conn.connect(socket_path)
    except OSError:
        return False
    finally:
        conn.close()
    return True


def _direct(command: str, argv: list[str]) -> int:
    try:
        from pgwarden.cli.main import main as cli_main  # noqa: PLC0415 - the slow path
    except ImportError:
        # Run as a script by `python -I -S` (the agent's archive_command and
        # restore_command): the full CLI needs site-packages, so a normal interpreter
        # takes over this process.
        os.execv(sys.executable, [sys.executable, "-m", "pgwarden", command, *argv])  # noqa: S606

    sys.argv = ["pgwarden", command, *argv]
    try:
        cli_main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_FAILED
    return EXIT_OK


def run(command: str, argv: list[str]) -> int:
    """`command` is wal-push or wal-fetch; returns the process exit code."""
    parsed = _parse(argv)
    if parsed is None:
        return _direct(command, argv)
    socket_path, _, positional = parsed
    expected = 1 if command == "wal-push" else 2
    if socket_path is None or len(positional) != expected:
        return _direct(command, argv)
    # os.path rather than pathlib: every import costs start-up time on this path.
    if command == "wal-push":
        request = ["push", os.path.abspath(positional[0])]  # noqa: PTH100
    else:
        request = ["fetch", positional[0], os.path.abspath(positional[1])]  # noqa: PTH100
    try:
        answer = ask(socket_path, request)
    except _NoAgent:
        return _direct(command, argv)
    if answer[0] == "ok":
        return EXIT_OK
    if answer[0] == "missing":
        return EXIT_FAILED
    reason = answer[1] if len(answer) > 1 and answer[1] else "the agent failed without a reason"
    sys.stderr.write(f"error: {reason}\n")
    return EXIT_FAILED


if __name__ == "__main__":  # `python -I -S .../client.py wal-push ...`: see invocation.py
    raise SystemExit(run(sys.argv[1], sys.argv[2:]))
