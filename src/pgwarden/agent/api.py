"""The agent's HTTP API: health endpoints for load balancers and peers.

Status codes follow what load balancers already use with Patroni: 200 when the member
is what the path asks for, 503 otherwise, with a JSON body either way.

- GET /primary, /leader, /read-write: this member holds the lease and runs as primary
- GET /replica[?lag=BYTES]: a running replica (within BYTES of the leader's position)
- GET /read-only: a running primary or replica
- GET /health: PostgreSQL runs
- GET /liveness: the HA loop ticked recently
- GET /readiness: the primary holding the lease, or a replica that replays
- GET /status: this member, observed now (peers use it to compare WAL positions)
- GET /cluster, /history: the last store snapshot
- GET /metrics: Prometheus text format, read from the live status on each scrape

Control endpoints need `Authorization: Bearer <token>` with the token from
`api.token_file`; without a token file they are off (403). POST /switchover, /failover,
/restart, /reload, /reinitialize take a JSON object and answer 202 (accepted), 200
(done), 409 (refused, with the sentence) or 400 (bad input). PATCH /config merges a
JSON object into the dynamic configuration, validated, with compare-and-set.
"""

from __future__ import annotations

import hmac
import json
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from pgwarden.agent.metrics import registry_for
from pgwarden.logs import get_logger

log = get_logger("api")

Status = dict[str, Any]


class ApiServer:
    """Serves the endpoints from `status()` (cached tick data) and `live_status()`."""

    def __init__(
        self,
        host: str,
        port: int,
        status: Callable[[], Status],
        live_status: Callable[[], Status],
        cluster: Callable[[], Status],
        control: Mapping[str, Callable[[dict[str, Any]], tuple[int, Any]]] | None = None,
        token: str | None = None,
        tls: tuple[str, str] | None = None,
        metrics: Callable[[], Status] | None = None,
    ) -> None:
        self._status = status
        self._metrics = None if metrics is None else registry_for(metrics)
        self._live = live_status
        self._cluster = cluster
        self._control = dict(control or {})
        self._token = token
        api = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # seconds a client may take to send its request

            def do_GET(self) -> None:
                api.handle(self)

            def do_POST(self) -> None:
                api.handle_control(self, "POST")

            def do_PATCH(self) -> None:
                api.handle_control(self, "PATCH")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(certfile=tls[0], keyfile=tls[1])
            # The handshake happens in the request's own thread, on its first read, so a
            # client that connects and stays silent cannot hold up the accept loop.
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(target=self._server.serve_forever, name="api", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        url = urlsplit(request.path)
        query = parse_qs(url.query)
        path = url.path.rstrip("/") or "/"
        if path == "/metrics" and self._metrics is not None:
            self._send_metrics(request, self._metrics)
            return
        try:
            code, body = self.route(path, query)
        except Exception as exc:
            log.exception("api.error", path=path)
            code, body = 503, {"error": str(exc)}
        self._send(request, code, body)

    def handle_control(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = urlsplit(request.path).path.rstrip("/")
        try:
            code, body = self.control(path if method == "POST" else f"{method} {path}", request)
        except Exception as exc:
            log.exception("api.error", path=path)
            code, body = 500, {"error": str(exc)}
        log.info("api.control", path=path, status=code)
        self._send(request, code, body)

    def control(self, path: str, request: BaseHTTPRequestHandler) -> tuple[int, Any]:
        handler = self._control.get(path)
        if handler is None:
            return 404, {"error": f"no control endpoint {path}"}
        if self._token is None:
            return 403, {"error": "control endpoints are off: api.token_file is not set"}
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {self._token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return 401, {"error": "missing or wrong bearer token"}
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return 400, {"error": "the request body is not JSON"}
        if not isinstance(body, dict):
            return 400, {"error": "the request body must be a JSON object"}
        return handler(body)

    def _send(self, request: BaseHTTPRequestHandler, code: int, body: Any) -> None:
        payload = json.dumps(body, default=str).encode()
        request.send_response(code)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)

    def _send_metrics(self, request: BaseHTTPRequestHandler, registry: CollectorRegistry) -> None:
        try:
            payload, code = generate_latest(registry), 200
        except Exception as exc:
            log.exception("api.error", path="/metrics")
            payload, code = f"metrics failed: {exc}\n".encode(), 503
        request.send_response(code)
        request.send_header("Content-Type", CONTENT_TYPE_LATEST if code == 200 else "text/plain")
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)

    def route(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        if path == "/status":
            return 200, self._live()
        if path in ("/cluster", "/history"):
            data = self._cluster()
            return 200, data if path == "/cluster" else data.get("history", [])
        status = self._status()
        running = status.get("state") == "running"
        role = status.get("role")
        leads = bool(status.get("holds_lease")) and role == "primary"
        checks: dict[str, bool] = {
            "/primary": leads,
            "/leader": leads,
            "/read-write": leads,
            "/master": leads,
            "/replica": running and role == "replica" and _lag_ok(status, query),
            "/read-only": running and role in ("primary", "replica"),
            "/health": running,
            "/liveness": _loop_alive(status),
            "/readiness": leads or (running and role == "replica"),
            "/": leads,
        }
        if path not in checks:
            return 404, {"error": f"no endpoint {path}"}
        return (200 if checks[path] else 503), status


def _loop_alive(status: Status) -> bool:
    """The HA loop completed a tick recently (a long action may hold it for a while)."""
    ticked = status.get("ticked_at")
    if ticked is None:
        return False
    return time.monotonic() - float(ticked) < 3 * float(status.get("loop_wait", 1)) + 60


def _lag_ok(status: Status, query: dict[str, list[str]]) -> bool:
    limit = query.get("lag")
    if not limit:
        return True
    try:
        max_lag = int(limit[0])
    except ValueError:
        return False
    lag = status.get("lag_bytes")
    return lag is not None and int(lag) <= max_lag
