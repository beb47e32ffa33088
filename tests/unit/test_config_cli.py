"""`pgwarden config check|show`: what an operator sees on the terminal and in JSON."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from pgwarden.cli.main import cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pgwarden.yml"

MINIMAL: dict[str, Any] = {
    "cluster": "main",
    "member": "node1",
    "dcs": {"hosts": ["zk1:2181", "zk2:2181"]},
    "storage": {"type": "s3", "bucket": "pg-backups"},
}


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "pgwarden.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def edit(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(MINIMAL)
    change(data)
    return data


def set_in(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change setting `a.b.c` to value, creating sections on the way."""

    def change(data: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        for key in parents:
            data = data.setdefault(key, {})
        data[leaf] = value

    return change


def delete(path: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        for key in parents:
            data = data[key]
        del data[leaf]

    return change


INVALID = [
    ("ttl-too-short", set_in("dcs.ttl", 0), "dcs.ttl", "must be at least 2 seconds, got 0"),
    ("loop-wait-not-below-ttl", set_in("dcs.loop_wait", 10), "dcs.loop_wait", "less than dcs.ttl"),
    ("safety-margin-too-large", set_in("dcs.safety_margin", 12), "dcs.safety_margin", "dcs.ttl"),
    ("host-without-port", set_in("dcs.hosts", ["zk1:2181", "zk2"]), "dcs.hosts[1]", "host:port"),
    ("port-out-of-range", set_in("dcs.hosts", ["zk1:70000"]), "dcs.hosts[0]", "1 to 65535"),
    ("relative-znode-root", set_in("dcs.root", "pgwarden"), "dcs.root", "absolute ZooKeeper"),
    ("misspelt-key", set_in("dcs.tll", 10), "dcs.tll", "did you mean 'ttl'?"),
    ("misspelt-section", set_in("postgress", {}), "postgress", "did you mean 'postgres'?"),
    ("cluster-with-space", set_in("cluster", "my cluster"), "cluster", "letters, digits"),
    ("member-too-long", set_in("member", "n" * 64), "member", "at most 63 characters"),
    ("member-missing", delete("member"), "member", "is required"),
    ("managed-port-parameter", set_in("postgres.parameters", {"port": 5433}),
     "postgres.parameters.port", "use postgres.port instead"),
    ("managed-archive-command", set_in("postgres.parameters", {"archive_command": "cp %p /x"}),
     "postgres.parameters.archive_command", "configure storage instead"),
    ("relative-data-dir", set_in("postgres.data_dir", "data"), "postgres.data_dir", "absolute"),
    ("port-as-string", set_in("postgres.port", "5432"), "postgres.port", "whole number"),
    ("two-password-sources",
     set_in("postgres.replication", {"password": "x", "password_file": "/p"}),
     "postgres.replication.password_file", "either password or password_file"),
    ("listen-wildcard", set_in("postgres.listen_address", "*"), "postgres.listen_address",
     "not a wildcard"),
    ("api-without-port", set_in("api.listen", "127.0.0.1"), "api.listen", "host:port"),
    ("s3-without-bucket", delete("storage.bucket"), "storage.bucket",
     "is required when type is 's3'"),
    ("fs-without-directory", set_in("storage", {"type": "fs"}), "storage.directory",
     "is required when type is 'fs'"),
    ("unknown-storage-type", set_in("storage.type", "gcs"), "storage.type", "'s3', 'fs'"),
    ("bad-sse", set_in("storage.sse", "aes256"), "storage.sse", "got 'aes256'"),
    ("kms-key-without-kms", set_in("storage.kms_key_id", "k1"), "storage.kms_key_id", "aws:kms"),
    ("inline-secret-key", set_in("storage.secret_access_key", "abc"),
     "storage.secret_access_key", "inline credentials are not accepted"),
    ("bad-bucket-name", set_in("storage.bucket", "PG_Backups"), "storage.bucket", "bucket name"),
    ("amcheck-depth-unknown", set_in("drill.amcheck_depth", "deep"), "drill.amcheck_depth",
     "got 'deep'"),
    ("archive-mode-off", set_in("wal.archive_mode", "off"), "wal.archive_mode",
     "must be 'on' or 'always', got 'off'"),
    ("bad-backup-cron", set_in("backup.schedule", "daily at one"), "backup.schedule",
     "cron expression"),
    ("zstd-level-too-high", set_in("backup.compression.level", 23), "backup.compression.level",
     "at most 22, got 23"),
    ("no-retention-rule", set_in("backup.retention", {"full_count": None}), "backup.retention",
     "full_count, window_days or both"),
    ("check-without-sql", set_in("drill.checks", [{"name": "a", "sql": "SELECT 1", "min": 1},
                                                   {"name": "b", "max": 3}]),
     "drill.checks[1].sql", "is required"),
    ("check-without-expectation", set_in("drill.checks", [{"name": "a", "sql": "SELECT 1"}]),
     "drill.checks[0]", "needs an expectation"),
    ("checks-not-a-list", set_in("drill.checks", {"name": "a"}), "drill.checks", "must be a list"),
    ("tls-cert-without-key", set_in("api.tls_cert_file", "/etc/pgwarden/api.crt"),
     "api.tls_key_file", "together with the other TLS file"),
    ("unknown-sync-mode", set_in("ha.synchronous_mode", "maybe"), "ha.synchronous_mode",
     "got 'maybe'"),
    ("negative-failover-priority", set_in("tags.failover_priority", -1),
     "tags.failover_priority", "at least 0"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "path", "problem"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_check_names_the_field_of_each_problem(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], path: str, problem: str
) -> None:
    result = run("config", "check", str(write(tmp_path, edit(change))))

    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: ")
    assert problem in lines[0]


def test_check_accepts_the_example_configuration() -> None:
    result = run("config", "check", str(EXAMPLE))

    assert (result.exit_code, result.stdout, result.stderr) == (0, "ok\n", "")


def test_check_accepts_a_minimal_configuration(tmp_path: Path) -> None:
    result = run("config", "check", str(write(tmp_path, MINIMAL)))

    assert (result.exit_code, result.stdout) == (0, "ok\n")


def test_check_prints_every_problem_one_per_line(tmp_path: Path) -> None:
    data = edit(set_in("dcs.ttl", 1))
    data["storage"]["sse"] = "kms"

    result = run("config", "check", str(write(tmp_path, data)))

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "dcs.ttl: must be at least 2 seconds, got 1",
        "storage.sse: must be 'none', 'AES256' or 'aws:kms', got 'kms'",
    ]


def test_check_json_lists_errors_with_path_and_message(tmp_path: Path) -> None:
    invalid = run("config", "check", "-o", "json", str(write(tmp_path, edit(delete("member")))))
    valid = run("config", "check", "-o", "json", str(EXAMPLE))

    assert invalid.exit_code == 1
    assert json.loads(invalid.stdout) == {
        "valid": False,
        "errors": [{"path": "member", "message": "is required"}],
    }
    assert valid.exit_code == 0
    assert json.loads(valid.stdout) == {"valid": True, "errors": []}


def test_check_of_a_missing_file_is_one_sentence(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"

    result = run("config", "check", str(missing))

    assert result.exit_code == 1
    assert result.stderr == f"configuration file {missing} does not exist\n"


def test_check_of_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "pgwarden.yml"
    path.write_text("cluster: main\nmember: node1\ndcs:\n  hosts: [zk1:2181\nstorage: {}\n")

    result = run("config", "check", str(path))

    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"configuration file {path}, line 5, column 8: invalid YAML: ")


def test_show_fills_in_defaults(tmp_path: Path) -> None:
    result = run("config", "show", str(write(tmp_path, MINIMAL)))

    assert result.exit_code == 0
    shown = yaml.safe_load(result.stdout)
    assert shown["dcs"] == {
        "hosts": ["zk1:2181", "zk2:2181"],
        "root": "/pgwarden",
        "ttl": 4,
        "loop_wait": 1,
        "retry_timeout": 2,
        "safety_margin": 1,
    }
    assert shown["postgres"]["port"] == 5432
    assert shown["api"]["listen"] == "127.0.0.1:8008"
    assert shown["storage"]["prefix"] == "pgwarden"
    assert shown["storage"]["sse"] == "none"
    assert shown["backup"]["retention"] == {"full_count": 7, "window_days": None}
    assert shown["backup"]["compression"] == {"algorithm": "zstd", "level": 3}


@pytest.mark.parametrize("output", ["text", "json"])
def test_show_masks_secrets(tmp_path: Path, output: str) -> None:
    data = edit(set_in("postgres.superuser.password", "Sup3r-S3cret-Pw"))
    data["postgres"]["replication"] = {"password": "R3pl-S3cret-Pw"}

    result = run("config", "show", "-o", output, str(write(tmp_path, data)))

    assert result.exit_code == 0
    assert "S3cret" not in result.output
    shown = json.loads(result.stdout) if output == "json" else yaml.safe_load(result.stdout)
    assert shown["postgres"]["superuser"]["password"] == "********"
    assert shown["postgres"]["replication"]["password"] == "********"


def test_show_of_the_example_hides_its_inline_password() -> None:
    result = run("config", "show", str(EXAMPLE))

    assert result.exit_code == 0
    assert "change-me-replication-secret" in EXAMPLE.read_text()
    assert "change-me-replication-secret" not in result.output
    assert yaml.safe_load(result.stdout)["cluster"] == "orders"


def test_show_of_an_invalid_file_prints_the_errors_like_check(tmp_path: Path) -> None:
    path = write(tmp_path, edit(set_in("dcs.ttl", 0)))

    shown = run("config", "show", str(path))
    checked = run("config", "check", str(path))

    assert shown.exit_code == checked.exit_code == 1
    assert shown.stdout == ""
    assert shown.stderr == checked.stderr == "dcs.ttl: must be at least 2 seconds, got 0\n"


def test_error_messages_never_contain_a_secret(tmp_path: Path) -> None:
    data = edit(set_in("postgres.superuser.password", ["Sup3r-S3cret-Pw"]))
    data["storage"]["endpoint_url"] = "https://AKIAKEY:S3cret-Key@minio.local"

    result = run("config", "check", str(write(tmp_path, data)))

    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 2
    assert "S3cret" not in result.output
