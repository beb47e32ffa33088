"""The `pgwarden` program: `wal-push`/`wal-fetch` take the standard-library fast path
(`pgwarden.wal.client`); everything else goes to the click CLI."""

from __future__ import annotations

import sys

FAST_COMMANDS = ("wal-push", "wal-fetch")


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] in FAST_COMMANDS:
        from pgwarden.wal.client import run  # noqa: PLC0415

        raise SystemExit(run(args[0], args[1:]))
    from pgwarden.cli.main import main as cli_main  # noqa: PLC0415

    cli_main()
