"""`pgwarden restart | reload | reinit`: ask members' agents through their control API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pgwarden.cli.common import config_option, open_store
from pgwarden.cli.render import emit_json, output_option
from pgwarden.config import Settings
from pgwarden.errors import PgwardenError
from pgwarden.peers import configure_tls, request_json


def _token(settings: Settings) -> str:
    path = settings.api.token_file
    if path is None:
        raise PgwardenError("api.token_file is not set; the agents' control endpoints are off")
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise PgwardenError(f"cannot read api.token_file {path}: {exc.strerror}") from None


def _call(
    config_path: Path, path: str, members: tuple[str, ...], body: dict[str, Any], output: str
) -> None:
    with open_store(config_path) as (settings, store):
        configure_tls(settings.api.tls_ca_file)
        token = _token(settings)
        cluster = store.read()
    names = list(members) or sorted(cluster.members)
    unknown = [n for n in names if n not in cluster.members]
    if unknown:
        raise PgwardenError(f"{unknown[0]} is not a member of cluster {settings.cluster}")
    results = {}
    failed = False
    for name in names:
        url = cluster.members[name].api_url
        code, answer = request_json(f"{url}{path}", body=body, token=token, timeout=5.0)
        ok = code in (200, 202)
        failed = failed or not ok
        message = answer.get("result") or answer.get("error") if isinstance(answer, dict) else None
        results[name] = {"status": code, "ok": ok, "message": message or f"no answer from {url}"}
    if output == "json":
        emit_json(results)
    else:
        for name, result in results.items():
            click.echo(f"{name}: {result['message']}")
    if failed:
        first = next(r for r in results.values() if not r["ok"])
        raise PgwardenError(str(first["message"]))


@click.command("restart")
@config_option
@click.argument("members", nargs=-1, metavar="[MEMBER]...")
@click.option("--pending", is_flag=True, help="Only where a changed setting needs a restart.")
@output_option
def restart_command(
    config_path: Path, members: tuple[str, ...], pending: bool, output: str
) -> None:
    """Restart PostgreSQL on MEMBERs (default: every member), keeping their roles.

    \b
    The primary keeps its lease: writes pause for the restart, there is no
    failover. Exit codes: 0 scheduled everywhere; 1 a member refused or did not
    answer (one sentence says which); 2 usage error.
    """
    _call(config_path, "/restart", members, {"pending": pending}, output)


@click.command("reload")
@config_option
@click.argument("members", nargs=-1, metavar="[MEMBER]...")
@output_option
def reload_command(config_path: Path, members: tuple[str, ...], output: str) -> None:
    """Reload PostgreSQL's configuration on MEMBERs (default: every member).

    Exit codes: 0 reloaded; 1 a member refused or did not answer; 2 usage error.
    """
    _call(config_path, "/reload", members, {}, output)


@click.command("reinit")
@config_option
@click.argument("member")
@output_option
def reinit_command(config_path: Path, member: str, output: str) -> None:
    """Re-clone the replica MEMBER from the primary (its data directory is replaced).

    \b
    Refused on the primary (switch over first). Exit codes: 0 scheduled; 1
    refused or no answer, one sentence says why; 2 usage error.
    """
    _call(config_path, "/reinitialize", (member,), {}, output)
