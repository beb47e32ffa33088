"""The agent's WAL socket: `pgwarden wal-push` and `wal-fetch` ask here first.

A unix stream socket beside the data directory, readable and writable by the PostgreSQL
OS user only; one JSON request and one JSON answer per connection (see
`pgwarden.wal.client`, tab-separated fields). Pushes are checked to name a file in this
instance's pg_wal.
"""

from __future__ import annotations

import os
import socketserver
import threading
from pathlib import Path

from pgwarden.errors import PgwardenError
from pgwarden.logs import get_logger
from pgwarden.wal.archiver import Archiver
from pgwarden.wal.fetcher import Fetcher

log = get_logger("agent.walserver")


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    archiver: Archiver | None
    fetcher: Fetcher
    pg_wal: Path


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(65536).decode(errors="replace").rstrip("\n")
        if not line:
            return  # a connection that asks nothing (`pgwarden wal-serve` looking for us)
        answer = self._answer(line.split("\t"))
        self.wfile.write(("\t".join(answer).replace("\n", " ") + "\n").encode())

    def _answer(self, request: list[str]) -> list[str]:
        try:
            match request:
                case ["push", path_text]:
                    path = Path(path_text)
                    archiver = self.server.archiver
                    if archiver is None or path.parent.resolve() != self.server.pg_wal.resolve():
                        return ["unavailable"]  # not ours: let the client go direct
                    archiver.push(path)
                    return ["ok"]
                case ["fetch", name, dest]:
                    found = self.server.fetcher.fetch(name, Path(dest))
                    return ["ok" if found else "missing"]
        except (PgwardenError, OSError) as exc:
            return ["error", str(exc).replace("\t", " ")]
        return ["error", f"unknown request {request[0]!r}"]


class WalServer:
    def __init__(
        self, path: Path, archiver: Archiver | None, fetcher: Fetcher, pg_wal: Path,
        owner: tuple[int, int] | None,
    ) -> None:  # fmt: skip
        self.path = path
        self.archiver = archiver
        self.fetcher = fetcher
        self.pg_wal = pg_wal
        self.owner = owner
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.unlink(missing_ok=True)  # a socket left by a killed agent
        server = _Server(str(self.path), _Handler)
        server.archiver, server.fetcher, server.pg_wal = self.archiver, self.fetcher, self.pg_wal
        self.path.chmod(0o600)
        if self.owner is not None:
            os.chown(self.path, *self.owner)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="walserver",
            daemon=True,
        )  # fmt: skip
        self._thread.start()
        log.info("wal.socket_listening", path=str(self.path))

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.path.unlink(missing_ok=True)
