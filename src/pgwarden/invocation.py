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
