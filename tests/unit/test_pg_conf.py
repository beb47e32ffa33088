"""Rendering of the files pgwarden manages in a PostgreSQL data directory."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from pgwarden.config import replication_slot_name
from pgwarden.postgres.conf import (
    Endpoint,
    InstanceSpec,
    conninfo,
    parameter_text,
    passfile_path,
    quote_value,
    render_files,
    render_hba,
    render_passfile,
    render_postgresql_conf,
    render_standby_settings,
    replication_role_sql,
    slot_name,
    strip_keys,
    sync_standby_names,
)

LEADER = Endpoint("node1", "127.0.0.11", 5441)


def make_spec(**overrides: Any) -> InstanceSpec:
    values: dict[str, Any] = {
        "name": "node2",
        "bin_dir": Path("/usr/lib/postgresql/15/bin"),
        "data_dir": Path("/var/lib/pg/node2"),
        "host": "127.0.0.12",
        "port": 5442,
        "os_user": "postgres",
        "superuser": "postgres",
        "superuser_password": "su-secret",
        "replication_user": "replicator",
        "replication_password": "repl-secret",
        "parameters": {},
    }
    return InstanceSpec(**(values | overrides))


_STRING = re.compile(r"'((?:[^'\\]|''|\\.)*)'")


def unquote(raw: str) -> str:
    """Read a postgresql.conf value back the way PostgreSQL's GUC lexer does."""
    match = _STRING.fullmatch(raw)
    if match is None:
        return raw
    out, text, i = [], match.group(1), 0
    escapes = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
    while i < len(text):
        if text[i] == "\\":
            out.append(escapes.get(text[i + 1], text[i + 1]))
            i += 2
        elif text.startswith("''", i):
            out.append("'")
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def settings(text: str) -> dict[str, str]:
    """postgresql.conf text -> {name: raw value}; fails if a name appears twice."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, value = line.split(" = ", 1)
        assert name not in found, f"{name} set twice"
        found[name] = value
    return found


def test_slot_name_is_the_config_rule() -> None:
    for member in ("node1", "Db-1.east", "a.b-c"):
        assert slot_name(member) == replication_slot_name(member)
    assert slot_name("Db-1.east") == "db_1_east"


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("plain", "'plain'"),
        ("it's", "'it''s'"),
        ("C:\\dir", "'C:\\\\dir'"),
        ("a\nb", "'a\\nb'"),
        ("", "''"),
    ],
)
def test_values_are_quoted_and_escaped(text: str, quoted: str) -> None:
    assert quote_value(text) == quoted
    assert unquote(quoted) == text


def test_parameter_text_renders_booleans_as_on_off() -> None:
    assert [parameter_text(v) for v in (True, False, 5, 0.5, "x")] == ["on", "off", "5", "0.5", "x"]


def test_managed_settings_are_rendered() -> None:
    conf = settings(render_postgresql_conf(make_spec()))
    assert conf["listen_addresses"] == "'127.0.0.12'"
    assert conf["port"] == "5442"
    assert conf["unix_socket_directories"] == "''"
    assert conf["wal_level"] == "'replica'"
    assert conf["hot_standby"] == "on"
    assert conf["wal_log_hints"] == "on"
    assert conf["hot_standby_feedback"] == "on"
    assert conf["max_wal_senders"] == "10"
    assert conf["max_replication_slots"] == "10"
    assert conf["wal_receiver_status_interval"] == "'1s'"
    assert conf["wal_retrieve_retry_interval"] == "'500ms'"
    assert conf["password_encryption"] == "'scram-sha-256'"
    assert conf["cluster_name"] == "'node2'"
    assert conf["archive_mode"] == "off"
    assert "archive_command" not in conf and "restore_command" not in conf
    assert conf["synchronous_standby_names"] == "''"
    assert conf["recovery_target_timeline"] == "'latest'"
    assert "primary_conninfo" not in conf


def test_archive_and_restore_commands_are_quoted() -> None:
    spec = make_spec(archive_command="pgwarden wal-push '%p'", restore_command="cp x '%p'")
    conf = settings(render_postgresql_conf(spec, synchronous_standby_names='FIRST 1 ("a")'))
    assert conf["archive_mode"] == "on"
    assert unquote(conf["archive_command"]) == "pgwarden wal-push '%p'"
    assert unquote(conf["restore_command"]) == "cp x '%p'"
    assert unquote(conf["synchronous_standby_names"]) == 'FIRST 1 ("a")'


def test_standbys_archive_too_with_archive_mode_always() -> None:
    spec = make_spec(archive_command="pgwarden wal-push '%p'", archive_mode="always")
    assert settings(render_postgresql_conf(spec))["archive_mode"] == "'always'"
    # Without an archive command nothing archives, whatever the mode says.
    spec = make_spec(archive_command=None, archive_mode="always")
    assert settings(render_postgresql_conf(spec))["archive_mode"] == "off"


def test_managed_keys_override_user_parameters() -> None:
    spec = make_spec(
        parameters={
            "port": "1",
            "hot_standby": "off",
            "wal_level": "minimal",
            "max_wal_senders": "4",
            "max_replication_slots": "25",
            "shared_buffers": "1GB",
            "wal_keep_size": "2GB",  # a pgwarden default, not managed: the user's wins
            "log_line_prefix": "%m [%p] it's ",
        }
    )
    conf = settings(render_postgresql_conf(spec))
    assert conf["port"] == "5442"
    assert conf["hot_standby"] == "on"
    assert conf["wal_level"] == "'replica'"
    assert conf["max_wal_senders"] == "10"
    assert conf["max_replication_slots"] == "25"
    assert conf["shared_buffers"] == "'1GB'"
    assert conf["wal_keep_size"] == "'2GB'"
    assert unquote(conf["log_line_prefix"]) == "%m [%p] it's "


def test_logical_wal_level_is_kept() -> None:
    conf = settings(render_postgresql_conf(make_spec(parameters={"wal_level": "logical"})))
    assert conf["wal_level"] == "'logical'"


def test_boolean_parameter_values_render_as_on_off() -> None:
    spec = make_spec(parameters={"log_connections": True, "fsync": "on"})
    conf = settings(render_postgresql_conf(spec))
    assert (conf["log_connections"], conf["fsync"]) == ("on", "'on'")


def test_standby_settings_point_at_the_leader_through_the_own_slot() -> None:
    spec = make_spec(name="Node-2", data_dir=Path("/srv/my pg/data"))
    conf = settings(render_standby_settings(spec, LEADER))
    assert unquote(conf["primary_slot_name"]) == "node_2"
    params = conninfo_to_dict(unquote(conf["primary_conninfo"]))
    assert params == {
        "host": "127.0.0.11",
        "port": "5441",
        "user": "replicator",
        "passfile": "/srv/my pg/data.pgpass",
        "application_name": "Node-2",
        "connect_timeout": "2",
        "keepalives": "1",
        "keepalives_idle": "5",
        "keepalives_interval": "2",
        "keepalives_count": "3",
    }
    assert "repl-secret" not in render_standby_settings(spec, LEADER)


def test_conninfo_quotes_values_libpq_would_split() -> None:
    text = conninfo(host="h", application_name="it's a \\ name", sslmode="")
    parsed = conninfo_to_dict(text)
    assert parsed == {"host": "h", "application_name": "it's a \\ name", "sslmode": ""}


def test_passfile_lives_beside_the_data_directory_and_escapes_fields() -> None:
    spec = make_spec(superuser_password="a:b\\c", replication_user="rep")
    assert passfile_path(spec) == Path("/var/lib/pg/node2.pgpass")
    assert render_passfile(spec).splitlines() == [
        "*:*:*:rep:repl-secret",
        "*:*:*:postgres:a\\:b\\\\c",
    ]


def test_hba_allows_password_logins_from_loopback_only() -> None:
    rows = [
        line.split()
        for line in render_hba(make_spec()).splitlines()
        if line and not line.startswith("#")
    ]
    assert rows == [
        ["host", "all", "all", "127.0.0.0/8", "scram-sha-256"],
        ["host", "all", "all", "::1/128", "scram-sha-256"],
        ["host", "replication", "all", "127.0.0.0/8", "scram-sha-256"],
        ["host", "replication", "all", "::1/128", "scram-sha-256"],
    ]


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ([], ""),
        (["node2"], 'FIRST 1 ("node2")'),
        (["node2", "node3"], 'FIRST 2 ("node2", "node3")'),
        (['we"ird'], 'FIRST 1 ("we""ird")'),
    ],
)
def test_sync_standby_names(members: list[str], expected: str) -> None:
    assert sync_standby_names(members) == expected


def test_auto_conf_loses_managed_keys_only() -> None:
    auto = (
        "# Do not edit this file manually!\n"
        "primary_conninfo = 'host=old'\n"
        "Port = '1'\n"
        "work_mem = '64MB'\n"
        "shared_buffers = '2GB'\n"
    )
    stripped = strip_keys(auto, {"primary_conninfo", "port", "shared_buffers"})
    assert stripped == "# Do not edit this file manually!\nwork_mem = '64MB'\n"


def test_render_files_for_primary_and_standby() -> None:
    spec = make_spec(parameters={"work_mem": "8MB"})
    auto = "# Do not edit\nprimary_slot_name = 'x'\nwork_mem = '1MB'\nstatement_timeout = 5\n"
    primary = render_files(spec, leader=None, auto_conf=auto)
    assert primary["standby.signal"] is None
    assert primary["postgresql.auto.conf"] == "# Do not edit\nstatement_timeout = 5\n"
    assert "primary_conninfo" not in (primary["postgresql.conf"] or "")
    standby = render_files(spec, leader=LEADER, auto_conf="statement_timeout = 5\n")
    assert standby["standby.signal"] == ""
    assert "postgresql.auto.conf" not in standby  # nothing to strip: left as it is
    conf = settings(standby["postgresql.conf"] or "")
    assert unquote(conf["primary_slot_name"]) == "node2"
    assert "host=127.0.0.11" in unquote(conf["primary_conninfo"])


def test_passwords_stay_out_of_repr_and_conf() -> None:
    spec = make_spec()
    assert "secret" not in repr(spec)
    assert "secret" not in render_postgresql_conf(spec)
    assert "secret" not in render_standby_settings(spec, LEADER)


def test_replication_role_statement_quotes_name_and_password() -> None:
    spec = make_spec(replication_user='re"p', replication_password="it's")
    assert replication_role_sql(spec) == (
        "CREATE ROLE \"re\"\"p\" WITH LOGIN REPLICATION PASSWORD 'it''s';"
    )
