"""`pgwarden check` as the on-call engineer runs it, against a file-system archive.

Small files with real WAL names stand in for segments: the check looks at names only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pgwarden.backup.context import BackupContext
from pgwarden.cli.main import cli
from pgwarden.config import load_config

SEGMENTS = [f"0000000100000000000000{n:02X}" for n in (1, 2, 3)]


@pytest.fixture
def config(fs_config: Path) -> Path:
    return fs_config


def archive(config: Path, names: list[str]) -> None:
    wal = BackupContext.from_settings(load_config(config)).wal
    for name in names:
        segment = config.parent / name
        segment.write_bytes(b"wal " + name.encode())
        wal.push(segment)


def check(config: Path, *options: str) -> Result:
    return CliRunner().invoke(cli, ["check", "-c", str(config), *options])


def test_an_archive_without_gaps_passes(config: Path) -> None:
    archive(config, SEGMENTS)
    result = check(config)
    assert result.exit_code == 0, result.output
    assert f"3 segments from {SEGMENTS[0]} (its start) to {SEGMENTS[2]}: no gaps" in result.output


def test_a_missing_segment_is_named_and_fails(config: Path) -> None:
    archive(config, [SEGMENTS[0], SEGMENTS[2]])
    result = check(config)
    assert result.exit_code == 1
    assert f"missing: {SEGMENTS[1]}" in result.output


def test_an_empty_archive_fails_and_says_where_it_looked(config: Path, tmp_path: Path) -> None:
    """A configuration pointing at the wrong place finds nothing: that is no success."""
    result = check(config)
    assert result.exit_code == 1
    assert "nothing to recover with: the archive holds no WAL segment" in result.output
    assert str(tmp_path / "store") in result.output
    assert "main/wal/" in result.output


def test_an_empty_archive_is_not_ok_in_json(config: Path) -> None:
    result = check(config, "-o", "json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False
    assert report["first"] is None
    assert report["gaps"] == []
