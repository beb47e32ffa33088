"""Loopback addresses and ports for lab services."""

from __future__ import annotations

import socket
import time

# Fixed loopback addresses per role, so a fault can cut one service off from another by
# address with iptables. Ports are picked free at start, so several labs can coexist.
ZOOKEEPER_ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
S3_ADDRESS = "127.0.0.5"
FIRST_MEMBER_OCTET = 11


def member_address(index: int) -> str:
    """Loopback address of the member with 1-based `index` (node1 -> 127.0.0.11)."""
    return f"127.0.0.{FIRST_MEMBER_OCTET + index - 1}"


def free_port(host: str, avoid: set[int] | None = None) -> int:
    """A TCP port that nobody listens on at `host` right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if avoid is None or port not in avoid:
            if avoid is not None:
                avoid.add(port)
            return port
    raise RuntimeError(f"no free port found on {host}")


def is_listening(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether a TCP connection to host:port is accepted."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port_closed(host: str, port: int, timeout: float) -> bool:
    """Wait until nothing accepts connections on host:port; True if it closed in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_listening(host, port):
            return True
        time.sleep(0.05)
    return not is_listening(host, port)
