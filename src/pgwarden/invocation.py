"""How PostgreSQL (archive_command, restore_command) and the agent run pgwarden itself."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

# archive_command waits for an upload in flight on the FIFO `<name>.wait` (see wal/acks.py)
# for at most WAIT_TIMEOUT seconds; past it the client asks the agent or goes to storage.
WAIT_SUFFIX = ".wait"
WAIT_TIMEOUT = 10
# restore_command's bound: a download takes well under a second, and FIFOs an agent left
# when it died (up to the prefetch depth of them) each hold recovery up this long.
FETCH_WAIT_TIMEOUT = 3


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
    taken with a plain `mv`, one still downloading is waited for on its FIFO
    `<name>.wait` there (no Python at all, see `wal/fetcher.py`); anything else goes to
    the client."""
    spooled = f"{shlex.quote(str(spool))}/%f"
    taken = f"mv -f {spooled} %p 2>/dev/null"
    fifo = f"{spooled}{WAIT_SUFFIX}"
    waited = f"timeout {FETCH_WAIT_TIMEOUT} grep -qx ok {fifo} 2>/dev/null"
    client = wal_client_command(config_path, "wal-fetch", socket, "%f", "%p")
    # `[` is the shell's own: what is not there costs no process (each ~1 ms here). The
    # FIFO of a prefetch is made long before PostgreSQL asks for its file.
    return (
        f"{{ [ -e {spooled} ] && {taken}; }} || {{ [ -p {fifo} ] && {waited} && {taken}; }} "
        f"|| {taken} || exec {client}"
    )


def wal_archive_command(config_path: Path, socket: str, acknowledged: Path) -> str:
    """archive_command through the agent. Without a Python process, a file its archiver
    stored is acknowledged by removing the marker it left in `acknowledged`, and a file
    still uploading by waiting on the FIFO `<name>.wait` there for `ok` (see `wal/acks.py`);
    anything else goes to the client."""
    marker = f"{shlex.quote(str(acknowledged))}/%f"
    taken = f"rm {marker} 2>/dev/null"
    # After `ok` the marker is left to the archiver, which drops it once the .ready goes.
    waited = f"timeout {WAIT_TIMEOUT} grep -qx ok {marker}{WAIT_SUFFIX} 2>/dev/null"
    client = wal_client_command(config_path, "wal-push", socket, "%p")
    command = f"{taken} || {waited} || {taken} || exec {client}"
    # PostgreSQL up to 15 builds archive_command in a buffer of MAXPGPATH (1024) bytes and
    # cuts what does not fit: with %f and %p filled in, the whole line must fit.
    if len(command.replace("%f", "F" * 40).replace("%p", "pg_wal/" + "F" * 40)) < 1000:
        return command
    return f"{taken} || exec {client}"
