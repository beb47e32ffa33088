"""The configuration layer: defaults, validation messages, secrets, frozen settings."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pgwarden.config import (
    MASK,
    FsStorage,
    S3Storage,
    Settings,
    effective_config,
    load_config,
    parse_config,
    read_password,
    replication_slot_name,
)
from pgwarden.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pgwarden.yml"

MINIMAL: dict[str, Any] = {
    "cluster": "main",
    "member": "node1",
    "dcs": {"hosts": ["zk1:2181"]},
    "storage": {"type": "fs", "directory": "/srv/pgwarden"},
}


def with_changes(**sections: Any) -> dict[str, Any]:
    """MINIMAL with top-level keys replaced or (for dicts) merged into."""
    data = copy.deepcopy(MINIMAL)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return data


def problems_of(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.lines()


def test_minimal_configuration_is_valid_and_gets_operator_defaults() -> None:
    settings = parse_config(MINIMAL)

    assert settings.cluster == "main"
    assert settings.member == "node1"
    assert settings.dcs.hosts == ("zk1:2181",)
    assert (settings.dcs.root, settings.dcs.ttl, settings.dcs.loop_wait) == ("/pgwarden", 4, 1)
    assert settings.dcs.retry_timeout < settings.dcs.ttl
    assert 0 < settings.dcs.safety_margin < settings.dcs.ttl
    assert settings.postgres.port == 5432
    assert settings.postgres.listen_address == "127.0.0.1"
    assert settings.postgres.data_dir == Path("/var/lib/postgresql/data")
    assert settings.postgres.bin_dir is None
    assert settings.postgres.superuser.username == "postgres"
    assert settings.postgres.replication.username == "replicator"
    assert settings.postgres.os_user == "postgres"
    assert settings.api.listen == "127.0.0.1:8008"
    assert settings.backup.retention.full_count == 7
    assert settings.backup.compression.algorithm == "zstd"
    assert settings.backup.compression.level == 3
    assert settings.drill.checks == ()
    assert isinstance(settings.storage, FsStorage)


def test_example_file_is_valid_and_uses_every_section() -> None:
    settings = load_config(EXAMPLE)

    assert isinstance(settings.storage, S3Storage)
    assert settings.storage.sse == "aws:kms"
    assert settings.backup.retention.window_days == 14
    assert len(settings.drill.checks) == 3
    assert settings.drill.member == "db3"
    assert settings.events.notify_command == ("/usr/local/bin/pgwarden-page", "--team", "database")
    assert settings.postgres.parameters["shared_buffers"] == "4GB"
    assert settings.api.token_file == Path("/etc/pgwarden/api.token")


def test_settings_are_frozen() -> None:
    settings = parse_config(with_changes(postgres={"parameters": {"work_mem": "64MB"}}))

    with pytest.raises(ValidationError, match="frozen"):
        settings.cluster = "other"
    with pytest.raises(ValidationError, match="frozen"):
        settings.dcs.ttl = 30
    with pytest.raises(TypeError):
        settings.postgres.parameters["work_mem"] = "1GB"  # type: ignore[index]
    with pytest.raises(AttributeError):
        settings.dcs.hosts.append("zk9:2181")  # type: ignore[attr-defined]


def test_ttl_below_minimum_reads_naturally() -> None:
    assert problems_of(with_changes(dcs={"ttl": 0})) == [
        "dcs.ttl: must be at least 2 seconds, got 0"
    ]


def test_every_problem_is_reported_at_once() -> None:
    data = with_changes(
        cluster="bad name",
        dcs={"ttl": 1, "hosts": ["zk1"]},
        backup={"compression": {"level": 0}},
    )

    lines = problems_of(data)

    assert [line.split(":", 1)[0] for line in lines] == [
        "cluster",
        "dcs.hosts[0]",
        "dcs.ttl",
        "backup.compression.level",
    ]


def test_timing_must_fit_inside_the_lease() -> None:
    lines = problems_of(
        with_changes(dcs={"ttl": 4, "loop_wait": 4, "retry_timeout": 5, "safety_margin": 5})
    )

    assert lines == [
        "dcs.loop_wait: must be less than dcs.ttl (4 seconds), got 4 seconds",
        "dcs.retry_timeout: must be less than dcs.ttl (4 seconds), got 5 seconds",
        "dcs.safety_margin: must be less than dcs.ttl (4 seconds), got 5 seconds",
    ]


def test_fractional_seconds_are_accepted_but_strings_are_not() -> None:
    settings = parse_config(with_changes(dcs={"ttl": 3, "loop_wait": 0.5, "retry_timeout": 2}))
    assert settings.dcs.loop_wait == 0.5

    assert problems_of(with_changes(dcs={"ttl": "10"})) == [
        "dcs.ttl: must be a number of seconds, got '10'"
    ]


@pytest.mark.parametrize(
    ("parameter", "advice"),
    [
        ("port", "use postgres.port instead"),
        ("listen_addresses", "use postgres.listen_address instead"),
        ("data_directory", "use postgres.data_dir instead"),
        ("hba_file", "cannot be set here"),
        ("primary_conninfo", "cannot be set here"),
        ("primary_slot_name", "cannot be set here"),
        ("archive_command", "configure storage instead"),
        ("restore_command", "configure storage instead"),
        ("Archive_Mode", "configure storage instead"),
    ],
)
def test_managed_parameters_are_refused_with_advice(parameter: str, advice: str) -> None:
    lines = problems_of(with_changes(postgres={"parameters": {parameter: "x"}}))

    assert len(lines) == 1
    assert lines[0].startswith(f"postgres.parameters.{parameter}: is managed by pgwarden")
    assert lines[0].endswith(advice)


def test_parameters_keep_ordinary_settings_and_refuse_weak_wal_level() -> None:
    settings = parse_config(
        with_changes(postgres={"parameters": {"shared_buffers": "1GB", "hot_standby": True}})
    )
    assert dict(settings.postgres.parameters) == {"shared_buffers": "1GB", "hot_standby": True}

    [line] = problems_of(with_changes(postgres={"parameters": {"wal_level": "minimal"}}))
    assert line.startswith("postgres.parameters.wal_level: must be 'replica' or 'logical'")


def test_unknown_keys_suggest_the_intended_one() -> None:
    assert problems_of(with_changes(dcs={"tll": 10})) == [
        "dcs.tll: unknown key; did you mean 'ttl'?"
    ]
    assert problems_of(with_changes(ttl=10)) == [
        "ttl: unknown key at the top level; did you mean dcs.ttl?"
    ]
    [line] = problems_of(with_changes(zzz=1))
    assert line.startswith("zzz: unknown key; the keys here are: cluster, member, postgres")


def test_storage_keys_of_the_other_type_are_explained() -> None:
    data = with_changes(storage={"bucket": "backups"})

    assert problems_of(data) == [
        "storage.bucket: only used when type is 's3', but this storage has type 'fs'"
    ]


def test_inline_cloud_credentials_are_refused_without_echoing_them() -> None:
    data = with_changes(
        storage={"type": "s3", "bucket": "backups", "aws_secret_access_key": "wJalrXUtnFEMI"}
    )
    del data["storage"]["directory"]

    [line] = problems_of(data)

    assert line.startswith("storage.aws_secret_access_key: inline credentials are not accepted")
    assert "storage.profile" in line
    assert "wJalrXUtnFEMI" not in line


def test_wrongly_typed_password_is_not_echoed() -> None:
    data = with_changes(postgres={"superuser": {"password": 918273645}})

    assert problems_of(data) == ["postgres.superuser.password: must be a string, got a number"]


def test_credentials_in_endpoint_url_are_refused_without_echoing_them() -> None:
    data = with_changes(
        storage={"type": "s3", "bucket": "backups", "endpoint_url": "https://AKIA:hunter2@minio"}
    )
    del data["storage"]["directory"]

    [line] = problems_of(data)

    assert line.startswith("storage.endpoint_url: must not contain credentials")
    assert "hunter2" not in line


def test_effective_config_fills_defaults_and_masks_every_secret() -> None:
    data = with_changes(
        postgres={
            "superuser": {"password": "s3cr3t-super"},
            "replication": {"password": "s3cr3t-repl"},
            "parameters": {"ssl_passphrase_command": "echo s3cr3t-tls"},
        }
    )

    effective = effective_config(parse_config(data))

    assert effective["postgres"]["superuser"] == {
        "username": "postgres",
        "password": MASK,
        "password_file": None,
    }
    assert effective["postgres"]["replication"]["password"] == MASK
    assert effective["postgres"]["parameters"]["ssl_passphrase_command"] == MASK
    assert "s3cr3t" not in repr(effective)
    assert effective["dcs"] == {
        "hosts": ["zk1:2181"],
        "root": "/pgwarden",
        "ttl": 4,
        "loop_wait": 1,
        "retry_timeout": 2,
        "safety_margin": 1,
    }
    assert effective["backup"]["schedule"] == "0 1 * * *"
    assert effective["drill"] == {
        "schedule": "0 3 * * 0",
        "checks": [],
        "member": None,
        "scratch_dir": None,
        "max_duration": 14400,
        "amcheck_depth": "standard",
    }
    assert effective["events"]["notify_command"] is None
    assert effective["events"]["notify_timeout"] == 30
    assert "drill_failed" in effective["events"]["notify_kinds"]


def test_drill_expectations_must_be_satisfiable() -> None:
    checks = [
        {"name": "rows", "sql": "SELECT count(*) FROM t", "min": 1},
        {"name": "nothing", "sql": "SELECT 1"},
        {"name": "inverted", "sql": "SELECT 1", "min": 5, "max": 1},
        {"name": "rows", "sql": "SELECT 2", "equals": 2},
    ]

    assert problems_of(with_changes(drill={"checks": checks})) == [
        "drill.checks[1]: needs an expectation: min, max, equals or a combination",
        "drill.checks[2].max: must not be below min (5)",
    ]
    del checks[1:3]
    assert problems_of(with_changes(drill={"checks": checks})) == [
        "drill.checks[1].name: 'rows' is used twice"
    ]


def test_drill_scheduling_and_notification_settings_are_checked() -> None:
    data = with_changes(
        drill={"member": "db 3", "scratch_dir": "scratch", "max_duration": 0},
        events={"notify_command": ["notify-send"], "notify_kinds": ["drill failed"],
                "notify_timeout": -1},
    )  # fmt: skip
    assert problems_of(data) == [
        "drill.member: must start with a letter or digit and contain only letters, digits, "
        "'_', '.' and '-', got 'db 3'",
        "drill.scratch_dir: must be an absolute path, got 'scratch'",
        "drill.max_duration: must be greater than 0 seconds, got 0",
        "events.notify_command: must start with an absolute program path, got 'notify-send'",
        "events.notify_kinds[0]: must start with a letter or digit and contain only letters, "
        "digits, '_', '.' and '-', got 'drill failed'",
        "events.notify_timeout: must be greater than 0 seconds, got -1",
    ]
    assert problems_of(with_changes(events={"notify_command": []})) == [
        "events.notify_command: must name the program to run (or be null)"
    ]
    assert problems_of(with_changes(events={"notify_command": "/bin/notify"})) == [
        "events.notify_command: must be a list, got '/bin/notify'"
    ]
    settings = parse_config(
        with_changes(
            drill={"member": "drillhost", "scratch_dir": "/srv/drills", "max_duration": 900},
            events={"notify_command": ["/usr/local/bin/page", "--team", "db"]},
        )
    )
    assert settings.drill.member == "drillhost" and settings.drill.max_duration == 900
    assert settings.events.notify_command == ("/usr/local/bin/page", "--team", "db")


def test_cron_expressions_are_checked() -> None:
    assert parse_config(with_changes(backup={"schedule": "@daily"})).backup.schedule == "@daily"
    assert parse_config(with_changes(backup={"schedule": None})).backup.schedule is None

    [line] = problems_of(with_changes(backup={"schedule": "0 25 * * *"}))
    assert line.startswith("backup.schedule: must be a cron expression of 5 fields")
    assert problems_of(with_changes(drill={"schedule": "0 0 30 2 *"})) == [
        "drill.schedule: never matches any date: '0 0 30 2 *'"
    ]


def test_retention_given_as_a_window_only_keeps_no_count() -> None:
    settings = parse_config(with_changes(backup={"retention": {"window_days": 30}}))

    assert settings.backup.retention.full_count is None
    assert settings.backup.retention.window_days == 30
    assert problems_of(with_changes(backup={"retention": {"window_days": 0}})) == [
        "backup.retention.window_days: must be at least 1 day, got 0"
    ]


def test_fs_storage_inside_the_data_directory_is_refused() -> None:
    data = with_changes(
        postgres={"data_dir": "/var/lib/pg"}, storage={"directory": "/var/lib/pg/backups"}
    )

    assert problems_of(data) == ["storage.directory: must not be inside postgres.data_dir"]


@pytest.mark.parametrize(
    ("member", "slot"),
    [("node1", "node1"), ("DB-1.east", "db_1_east"), ("a_b", "a_b")],
)
def test_replication_slot_names_follow_postgres_rules(member: str, slot: str) -> None:
    assert replication_slot_name(member) == slot
    assert parse_config(with_changes(member=member)).slot_name == slot


def test_hosts_accept_names_and_bracketed_ipv6_but_not_duplicates() -> None:
    hosts = ["zk1.example.com:2181", "10.0.0.2:2181", "[::1]:2181"]
    assert parse_config(with_changes(dcs={"hosts": hosts})).dcs.hosts == tuple(hosts)

    assert problems_of(with_changes(dcs={"hosts": ["zk1:2181", "ZK1:2181"]})) == [
        "dcs.hosts[1]: 'ZK1:2181' is listed twice"
    ]
    assert problems_of(with_changes(dcs={"hosts": []})) == [
        "dcs.hosts: must list at least one ZooKeeper server as host:port"
    ]


def test_load_config_reports_file_problems_in_one_sentence(tmp_path: Path) -> None:
    cases = {
        "missing.yml": None,
        "empty.yml": "",
        "list.yml": "- cluster\n- member\n",
        "twice.yml": "cluster: a\nmember: b\ncluster: c\n",
    }
    messages = {}
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_config(tmp_path / name)
        [messages[name]] = caught.value.lines()

    assert messages["missing.yml"] == f"configuration file {tmp_path}/missing.yml does not exist"
    assert messages["empty.yml"] == f"configuration file {tmp_path}/empty.yml is empty"
    assert messages["list.yml"].endswith(
        "must be a mapping of settings at the top level, got a list"
    )
    assert messages["twice.yml"] == (
        f"configuration file {tmp_path}/twice.yml, line 3, column 1: "
        "invalid YAML: key 'cluster' is given twice"
    )


def test_bad_yaml_names_the_line_but_not_its_content(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("cluster: main\npostgres:\n  superuser:\n    password: hunter2: x\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert caught.value.lines() == [
        f"configuration file {path}, line 4, column 22: "
        "invalid YAML: mapping values are not allowed here"
    ]


def test_read_password_prefers_inline_then_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\n")
    inline = with_changes(postgres={"superuser": {"password": "inline"}})
    from_file = with_changes(postgres={"replication": {"password_file": str(secret_file)}})

    assert read_password(parse_config(inline).postgres.superuser) == "inline"
    assert read_password(parse_config(from_file).postgres.replication) == "from-file"
    assert read_password(parse_config(MINIMAL).postgres.superuser) is None


def test_settings_model_matches_the_documented_sections() -> None:
    assert list(Settings.model_fields) == [
        "cluster",
        "member",
        "postgres",
        "dcs",
        "ha",
        "tags",
        "api",
        "storage",
        "backup",
        "wal",
        "drill",
        "events",
    ]


def test_sections_left_empty_in_yaml_take_their_defaults(tmp_path: Path) -> None:
    path = tmp_path / "pgwarden.yml"
    path.write_text(
        "cluster: main\nmember: node1\n"
        "postgres:\n  # port: 5433\n"
        "dcs:\n  hosts: [zk1:2181]\n"
        "storage: {type: fs, directory: /srv/pgwarden}\n"
        "drill:\n  checks:\n"
    )

    settings = load_config(path)

    assert settings.postgres.port == 5432
    assert settings.drill.checks == ()


def test_a_required_section_left_empty_names_what_it_needs(tmp_path: Path) -> None:
    path = tmp_path / "pgwarden.yml"
    path.write_text("cluster: main\nmember: node1\ndcs:\nstorage:\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert caught.value.lines() == [
        "dcs.hosts: is required",
        "storage.type: is required: one of 's3', 'fs'",
    ]


def test_yaml_merge_keys_work_and_later_keys_override(tmp_path: Path) -> None:
    path = tmp_path / "pgwarden.yml"
    path.write_text(
        "cluster: main\nmember: node1\n"
        "dcs:\n  <<: {ttl: 20, loop_wait: 2}\n  loop_wait: 3\n  hosts: [zk1:2181]\n"
        "storage: {type: fs, directory: /srv/pgwarden}\n"
    )

    dcs = load_config(path).dcs

    assert (dcs.ttl, dcs.loop_wait) == (20, 3)


def test_infinite_durations_are_refused() -> None:
    assert problems_of(with_changes(dcs={"ttl": float("inf")})) == [
        "dcs.ttl: must be a finite number of seconds, got inf"
    ]
