"""systemd's readiness protocol (sd_notify) in the standard library.

Under `Type=notify` systemd passes a datagram socket in `$NOTIFY_SOCKET` (a path, or an
abstract name written with a leading '@') and waits for `READY=1` before it calls the
unit started. Outside systemd the variable is unset and every call does nothing, so the
agent runs the same way in the lab, in a container and under systemd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

from pgwarden.logs import get_logger

log = get_logger("sdnotify")

# A STATUS= line longer than this is cut: systemd shows one line, and a datagram must fit.
STATUS_MAX = 400


def notify_address(value: str | None) -> str | bytes | None:
    """The socket address in a `$NOTIFY_SOCKET` value: a path, abstract (bytes with a
    leading NUL) or None."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # a kind (vsock:) pgwarden does not speak


def status_field(text: str) -> str:
    """A `STATUS=` field: one line, at most STATUS_MAX characters."""
    line = " ".join(text.split())
    return "STATUS=" + (line if len(line) <= STATUS_MAX else line[: STATUS_MAX - 3] + "...")


class Notifier:
    """This process's channel to systemd; every method is a no-op outside systemd."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address

    @classmethod
    def claim(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Take `$NOTIFY_SOCKET` out of the environment before any child is started: the
        unit's readiness is the agent's to tell. PostgreSQL built with systemd support
        (Debian's is) would otherwise send its own READY=1 and STOPPING=1, which systemd
        refuses from a process other than the main one, with a warning each time."""
        env = os.environ if environ is None else environ
        return cls(notify_address(env.pop("NOTIFY_SOCKET", None)))

    def notify(self, *fields: str) -> bool:
        """Send `KEY=VALUE` fields; True when sent. A lost notification must never stop
        the agent: failures are logged, not raised."""
        if self.address is None or not fields:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall("\n".join(fields).encode())
        except OSError as exc:
            log.warning("sdnotify.failed", fields=list(fields), error=str(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """The agent is up (`READY=1`), with an optional status line."""
        return self.notify("READY=1", *([status_field(status)] if status else []))

    def stopping(self, status: str | None = None) -> bool:
        """The agent is shutting down (`STOPPING=1`)."""
        return self.notify("STOPPING=1", *([status_field(status)] if status else []))

    def status(self, text: str) -> bool:
        """Update the line `systemctl status` shows."""
        return self.notify(status_field(text))
