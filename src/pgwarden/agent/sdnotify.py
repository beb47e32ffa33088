"""systemd's readiness protocol (sd_notify) in the standard library.

Under `Type=notify` systemd passes a datagram socket in `$NOTIFY_SOCKET` (a path, or an
abstract name written with a leading '@') and waits for `READY=1` before it calls the
unit started. Outside systemd the variable is unset and every call does nothing, so the
agent runs the same way in the lab, in a container and under systemd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from pgwarden.logs import get_logger

log = get_logger("sdnotify")

# A STATUS= line longer than this is cut: systemd shows one line, and a datagram must fit.
STATUS_MAX = 400


def notify_address(environ: Mapping[str, str]) -> str | bytes | None:
    """The socket address from `$NOTIFY_SOCKET`: a path, abstract (bytes with a NUL) or None."""
    value = environ.get("NOTIFY_SOCKET", "")
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # unset, or a kind (vsock:) pgwarden does not speak


def notify(*fields: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `KEY=VALUE` fields to systemd; True when sent, False outside systemd or on error.

    A lost notification must never stop the agent: failures are logged, not raised.
    """
    address = notify_address(os.environ if environ is None else environ)
    if address is None or not fields:
        return False
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning("sdnotify.failed", fields=list(fields), error=str(exc))
        return False
    return True


def status_field(text: str) -> str:
    """A `STATUS=` field: one line, at most STATUS_MAX characters."""
    line = " ".join(text.split())
    return "STATUS=" + (line if len(line) <= STATUS_MAX else line[: STATUS_MAX - 3] + "...")


def ready(status: str | None = None) -> bool:
    """Tell systemd the agent is up (`READY=1`), with an optional status line."""
    return notify("READY=1", *([status_field(status)] if status else []))


def stopping(status: str | None = None) -> bool:
    """Tell systemd the agent is shutting down (`STOPPING=1`)."""
    return notify("STOPPING=1", *([status_field(status)] if status else []))


def status(text: str) -> bool:
    """Update the line `systemctl status` shows."""
    return notify(status_field(text))
