"""Every `pgwarden ...` command the runbooks quote is one the real CLI accepts, so the
runbooks cannot rot when a command or an option changes."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

import click
import pytest

from pgwarden.cli.main import cli

RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks"
EXPECTED = {
    "primary-down.md",
    "archiving-failing.md",
    "drill-failed.md",
    "pitr.md",
    "maintenance-switchover.md",
}


def command_path(argv: Sequence[str], *, complete: bool) -> list[str]:
    """The command path `argv` names (`["drill", "run"]`), parsed by every group and
    command on the way as the program would: an unknown command or option raises a
    click.UsageError. `complete=False` (a command named in prose) lets required
    arguments and values go unchecked."""
    ctx = cli.make_context("pgwarden", list(argv), resilient_parsing=not complete)
    path: list[str] = []
    command: click.Command = cli
    while isinstance(command, click.Group):
        # click 8.2+ keeps the subcommand and its arguments in _protected_args.
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if not rest:
            break
        name, sub, rest = command.resolve_command(ctx, rest)
        assert name is not None and sub is not None
        path.append(name)
        command = sub
        ctx = command.make_context(name, rest, parent=ctx, resilient_parsing=not complete)
    if complete and isinstance(command, click.Group):
        raise click.UsageError(f"{' '.join(path)} needs a subcommand")
    return path


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
