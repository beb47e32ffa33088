"""`pgwarden wal-push` and `wal-fetch` as PostgreSQL runs them when no agent answers:
idempotent pushes, refused conflicting ones, and a missing segment answered at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pgwarden.codec import decode_bytes

SEGMENT = "000000010000000000000007"


@pytest.fixture
def config(fs_config: Path) -> Path:
    return fs_config


def pgwarden(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The agent's socket does not exist: the client takes the direct path.
    socket = ["--socket", str(config.parent / "no-agent.sock")]
    return subprocess.run(
        [sys.executable, "-m", "pgwarden", args[0], "-c", str(config), *socket, *args[1:]],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_duplicate_push_is_accepted_and_a_different_one_refused(
    config: Path, tmp_path: Path
) -> None:
    wal = tmp_path / "pg_wal"
    wal.mkdir()
    segment = wal / SEGMENT
    segment.write_bytes(b"\x01" * 65536)
    stored = tmp_path / "store" / "main" / "wal" / "00000001" / SEGMENT
    for _ in range(2):
        done = pgwarden(config, "wal-push", str(segment))
        assert (done.returncode, done.stderr) == (0, "")
    original = stored.read_bytes()

    segment.write_bytes(b"\x02" * 65536)
    refused = pgwarden(config, "wal-push", str(segment))
    assert refused.returncode == 1
    assert refused.stderr == (
        f"error: {SEGMENT} is already archived as main/wal/00000001/{SEGMENT} with different "
        "content; the archived file was kept and this push refused\n"
    )
    assert stored.read_bytes() == original
    assert decode_bytes(original, keys=None) == b"\x01" * 65536

    fetched = tmp_path / "RECOVERYXLOG"
    assert pgwarden(config, "wal-fetch", SEGMENT, str(fetched)).returncode == 0
    assert fetched.read_bytes() == b"\x01" * 65536


def test_a_missing_segment_is_answered_at_once(config: Path, tmp_path: Path) -> None:
    done = pgwarden(config, "wal-fetch", "000000010000000000000099", str(tmp_path / "x"))
    assert (done.returncode, done.stdout, done.stderr) == (1, "", "")
    assert not (tmp_path / "x").exists()
    history = pgwarden(config, "wal-fetch", "00000002.history", str(tmp_path / "h"))
    assert (history.returncode, history.stderr) == (1, "")
