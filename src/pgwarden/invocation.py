"""How PostgreSQL (archive_command, restore_command) and the agent run pgwarden itself."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def pgwarden_command(config_path: Path, command: str, *args: str) -> str:
    """A shell command running this pgwarden's `command` with `config_path` and `args`.

    The interpreter is this one (PostgreSQL's PATH may not hold the venv), and the
    configuration path is absolute (archive_command runs in the data directory)."""
    argv = [sys.executable, "-m", "pgwarden", command, "-c", str(config_path.absolute())]
    return shlex.join([*argv, *args])


def wal_client_command(config_path: Path, command: str, socket: str, *args: str) -> str:
    """archive_command / restore_command through the agent's socket: the standard-library
    client run as a script by `python -I -S`, which skips site-packages and `-m`'s runpy
    (12 ms a call here instead of 27 ms). Without an agent the client hands over to the
    full CLI (`python -m pgwarden`), so the configuration path rides along."""
    client = Path(__file__).resolve().parent / "wal" / "client.py"
    argv = [sys.executable, "-I", "-S", str(client), command, "--socket", socket]
    return shlex.join([*argv, "-c", str(config_path.absolute()), *args])


def wal_restore_command(config_path: Path, socket: str, spool: Path) -> str:
    """restore_command through the agent: a segment its fetcher prefetched into `spool` is
    taken with a plain `mv` (no Python at all); anything else goes to the client."""
    taken = f"mv -f {shlex.quote(str(spool))}/%f %p 2>/dev/null"
    return f"{taken} || exec {wal_client_command(config_path, 'wal-fetch', socket, '%f', '%p')}"


def wal_archive_command(config_path: Path, socket: str, acknowledged: Path) -> str:
    """archive_command through the agent: a file its archiver already stored is acknowledged
    by removing the marker it left in `acknowledged` (no Python at all); else the client."""
    taken = f"rm {shlex.quote(str(acknowledged))}/%f 2>/dev/null"
    return f"{taken} || exec {wal_client_command(config_path, 'wal-push', socket, '%p')}"
