"""The command-line checker the packaging tests rely on refuses what the CLI refuses."""

from __future__ import annotations

import click
import pytest

from cli_check import resolve, resolve_shell


def test_resolves_nested_commands_with_their_options() -> None:
    argv = ["--log-level", "info", "drill", "run", "-c", "/etc/x.yml", "--scratch-dir", "/y"]
    assert resolve(argv) == ["pgwarden", "drill", "run"]
    assert resolve_shell("/opt/venv/bin/pgwarden agent -c /etc/x.yml") == ["pgwarden", "agent"]


@pytest.mark.parametrize(
    "argv",
    [
        ["nosuch"],
        ["agent", "--no-such-option"],
        ["drill", "sprint"],
        ["list", "-o", "xml"],
    ],
)
def test_refuses_what_the_program_refuses(argv: list[str]) -> None:
    with pytest.raises(click.UsageError):
        resolve(argv)
