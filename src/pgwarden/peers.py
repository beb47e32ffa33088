"""Talking to agents' HTTP APIs: small JSON GET/POST helpers with hard timeouts."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pgwarden.control import MemberNow, member_now
from pgwarden.model import ClusterState

_tls: ssl.SSLContext | None = None


def configure_tls(ca_file: str | Path | None) -> None:
    """Trust `ca_file` (or the system CAs when None) for every https:// agent URL."""
    global _tls  # noqa: PLW0603 - one client setting per process, set once at start
    _tls = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def request_json(
    url: str,
    *,
    body: dict[str, Any] | None = None,
    token: str | None = None,
    method: str | None = None,
    timeout: float = 1.0,
) -> tuple[int, Any]:
    """(HTTP status, decoded JSON body); (0, {}) when nothing answered in time."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - http(s) only
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        context = _tls if url.startswith("https:") else None
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            return int(response.status), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read() or b"{}")
        except ValueError:
            answer = {}
        return int(exc.code), answer
    except (urllib.error.URLError, OSError, ValueError):
        return 0, {}


def members_now(cluster: ClusterState, timeout: float = 1.0) -> dict[str, MemberNow]:
    """Every member's `/status`, asked in parallel."""
    urls = {n: m.api_url for n, m in cluster.members.items() if m.api_url}
    if not urls:
        return {}

    def ask(url: str) -> MemberNow:
        code, body = request_json(f"{url}/status", timeout=timeout)
        return member_now(body if code == 200 else None)

    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        answers = {n: pool.submit(ask, u) for n, u in urls.items()}
        return {n: f.result() for n, f in answers.items()}
