"""Resolve a `pgwarden ...` command line through the real click CLI, without running it."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import click

from pgwarden.cli.main import cli


def command_path(argv: Sequence[str], *, complete: bool = True) -> list[str]:
    """The command path (`["drill", "run"]`) that `argv` names, parsed by every group and
    command on the way as the program would: an unknown command, an unknown option or a bad
    option value raises click's UsageError/BadParameter, as the program would exit 2.
    `complete=False` (a command named in prose) lets required arguments and values go
    unchecked. `argv` starts after the program name."""
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


def resolve(argv: Sequence[str]) -> list[str]:
    """`command_path` with the program's name first (`["pgwarden", "drill", "run"]`)."""
    return ["pgwarden", *command_path(argv)]


def resolve_shell(line: str) -> list[str]:
    """`resolve` for a shell command line whose program is pgwarden (any directory)."""
    words = shlex.split(line)
    assert words and words[0].rsplit("/", 1)[-1] == "pgwarden", f"not a pgwarden command: {line}"
    return resolve(words[1:])
