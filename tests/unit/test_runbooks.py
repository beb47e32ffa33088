"""Every `pgwarden ...` command the runbooks quote is one the real CLI accepts, so the
runbooks cannot rot when a command or an option changes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from cli_check import command_path

RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks"
EXPECTED = {
    "primary-down.md",
    "archiving-failing.md",
    "drill-failed.md",
    "pitr.md",
    "maintenance-switchover.md",
}


def shell_commands(text: str) -> list[list[str]]:
    """pgwarden's arguments on every line of the fenced code blocks (continuations
    joined, comments dropped, a leading `sudo -u USER` allowed)."""
    found = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["sudo", "-u"]:
                words = words[3:]
            if words and words[0] == "pgwarden":
                found.append(words[1:])
    return found


def prose_commands(text: str) -> list[list[str]]:
    """pgwarden's arguments in every inline code span of the prose."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return [shlex.split(span)[1:] for span in re.findall(r"`(pgwarden [^`]+)`", prose)]


def test_the_runbooks_are_all_there() -> None:
    assert {path.name for path in RUNBOOKS.glob("*.md")} >= EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_quoted_command_parses_against_the_cli(name: str) -> None:
    text = (RUNBOOKS / name).read_text()
    lines = shell_commands(text)
    assert len(lines) >= 3, "a runbook shows the commands to run"
    for argv in lines:
        try:
            command_path(argv, complete=True)
        except click.ClickException as exc:
            pytest.fail(f"{name}: `pgwarden {shlex.join(argv)}`: {exc.format_message()}")
    for argv in prose_commands(text):
        try:
            command_path(argv, complete=False)
        except click.ClickException as exc:
            pytest.fail(f"{name}: `pgwarden {shlex.join(argv)}`: {exc.format_message()}")


@pytest.mark.parametrize(
    ("argv", "path"),
    [
        (["list"], ["list"]),
        (["drill", "run", "--backup", "latest"], ["drill", "run"]),
        (["failover", "--to", "db-2", "--dry-run"], ["failover"]),
        (["-c", "/etc/pgwarden/pgwarden.yml", "backup", "verify"], None),  # -c is per command
        (["switchover", "--to-member", "db-2"], None),
        (["failover", "--dry-run"], None),  # --to is required
        (["backup"], None),  # a group alone does nothing
        (["drill", "rerun"], None),
        (["restore", "--target-action", "resume"], None),
    ],
)
def test_the_parser_refuses_what_the_cli_refuses(argv: list[str], path: list[str] | None) -> None:
    if path is None:
        with pytest.raises(click.UsageError):
            command_path(argv, complete=True)
    else:
        assert command_path(argv, complete=True) == path


def test_extraction_of_commands() -> None:
    text = (
        "Run `pgwarden backup delete` later.\n\n"
        "```sh\n"
        "pgwarden list                 # roles\n"
        "sudo -u postgres pgwarden backup list \\\n"
        "    -c /etc/pgwarden/pgwarden.yml\n"
        "systemctl stop pgwarden\n"
        "```\n"
    )
    assert shell_commands(text) == [
        ["list"],
        ["backup", "list", "-c", "/etc/pgwarden/pgwarden.yml"],
    ]
    assert prose_commands(text) == [["backup", "delete"]]
    assert command_path(["backup", "delete"], complete=False) == ["backup", "delete"]
