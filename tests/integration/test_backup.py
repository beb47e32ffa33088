"""Base backups end to end: real PostgreSQL archiving through `pgwarden wal-push`, the CLI as
users run it, restores started and queried. Storage is `fs` here; the S3 endpoint has its
own tests at the end."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from backup_support import Archived, accounts_digest, owned_directory

from pgwarden.agent.metrics import read_stored_summary
from pgwarden.backup.context import BackupContext
from pgwarden.backup.pages import page_checksums
from pgwarden.codec import Key
from pgwarden.config import load_config
from pgwarden.lab import Lab
from pgwarden.lab.archiving import s3_storage
from pgwarden.lab.net import free_port
from pgwarden.retry import poll_until

pytestmark = pytest.mark.integration


@pytest.fixture
def archived(make_cluster: Callable[..., Lab]) -> Archived:
    lab = make_cluster(nodes=1)
    work = owned_directory(lab.directory, "work", lab.os_user)
    store = owned_directory(work, "store", lab.os_user)
    return Archived(lab, lab.members[0].name, work, {"type": "fs", "directory": str(store)})


def stored_objects(archived: Archived, backup: str) -> list[Path]:
    root = Path(archived.storage["directory"]) / "lab" / "basebackups" / backup
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json")


def test_a_full_backup_restores_every_row_and_replays_archived_wal(archived: Archived) -> None:
    archived.pgbench_init(2)
    backup = archived.json("backup", "create")
    assert backup["kind"] == "full" and backup["bad_pages"] == 0
    assert backup["db_bytes"] > 30_000_000 > backup["stored_bytes"] > 0
    archived.sql("CREATE TABLE after_backup AS SELECT 42 AS answer")
    digest = accounts_digest(archived.sql)
    archived.archive_current_wal()

    listed = archived.json("backup", "list")
    assert [b["id"] for b in listed] == [backup["id"]]
    shown = archived.json("backup", "show", "latest")
    assert shown["id"] == backup["id"] and shown["data_checksums"] is True
    assert "START WAL LOCATION" in shown["backup_label"]

    target = archived.target("restored")
    done = archived.pgw("restore", "--target-dir", str(target))
    assert done.returncode == 0, done.stderr
    assert f"restored backup {backup['id']}" in done.stdout
    assert not (target / "postmaster.pid").exists()
    member = archived.start(target)
    assert archived.query(member, "SELECT answer FROM after_backup") == [(42,)]
    assert accounts_digest(lambda q: archived.query(member, q)) == digest


def test_an_incremental_backup_uploads_little_and_restores_the_change(archived: Archived) -> None:
    archived.pgbench_init(4)
    full = archived.json("backup", "create")
    archived.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 0")
    archived.sql("CHECKPOINT")
    incr = archived.json("backup", "create", "--type", "incr")
    assert incr["kind"] == "incr" and incr["references"] == [full["id"]]
    # pgbench_accounts changed (1% of rows, on every page) and is stored again; its index
    # and the other tables are taken from the full backup.
    assert incr["reused_bytes"] > 10_000_000
    assert incr["stored_bytes"] < full["stored_bytes"]
    digest = accounts_digest(archived.sql)
    archived.archive_current_wal()

    refused = archived.pgw("backup", "delete", full["id"], "--yes")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"error: backup {full['id']} holds files that {incr['id']} still use; delete those first"
    )
    assert [b["id"] for b in archived.json("backup", "list")] == [full["id"], incr["id"]]

    target = archived.target("restored")
    assert (
        archived.pgw("restore", "--backup", incr["id"], "--target-dir", str(target)).returncode == 0
    )
    member = archived.start(target)
    assert accounts_digest(lambda q: archived.query(member, q)) == digest

    for ident in (incr["id"], full["id"]):
        deleted = archived.pgw("backup", "delete", ident, "--yes")
        assert deleted.returncode == 0, deleted.stderr
    assert archived.json("backup", "list") == []
    assert not stored_objects(archived, full["id"])


def test_verify_and_restore_name_a_flipped_byte(archived: Archived) -> None:
    archived.pgbench_init(1)
    backup = archived.json("backup", "create")
    assert archived.pgw("backup", "verify").returncode == 0
    victim = max(stored_objects(archived, backup["id"]), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    key = str(victim.relative_to(archived.storage["directory"]))

    verify = archived.pgw("backup", "verify", backup["id"])
    assert verify.returncode == 1
    assert f"backup {backup['id']}: {key}" in verify.stdout
    assert "1 problem(s)" in verify.stdout

    target = archived.target("restored")
    restore = archived.pgw("restore", "--target-dir", str(target))
    assert restore.returncode == 1
    assert restore.stderr.startswith(f"error: restore into {target} stopped: object {key}")
    assert len(restore.stderr.strip().splitlines()) == 1
    assert not (target / "global" / "pg_control").exists()
    assert not list(target.rglob("*.pgwarden-restore"))


def test_an_encrypted_backup_needs_its_key(archived: Archived) -> None:
    keys = {}
    for name in ("right", "wrong"):
        key_file = archived.directory / f"{name}.key"
        key = Key.generate()
        key_file.write_bytes(key.secret)
        key_file.chmod(0o600)
        keys[name] = key
    with_key = archived.write_config("with-key.yml", key_file=archived.directory / "right.key")
    wrong_key = archived.write_config("wrong-key.yml", key_file=archived.directory / "wrong.key")
    archived.pgbench_init(1)
    backup = archived.json("backup", "create", config=with_key)
    assert backup["encrypted"] is True
    for stored in stored_objects(archived, backup["id"]):
        assert b"pgbench_accounts" not in stored.read_bytes()

    right_id, wrong_id = keys["right"].key_id, keys["wrong"].key_id
    manifest = f"lab/basebackups/{backup['id']}/manifest.json"
    for config, reason in (
        (archived.config, f"object is encrypted with key id {right_id}, but no key was given"),
        (wrong_key, f"object is encrypted with key id {right_id}, "
                    f"but the key given has key id {wrong_id}"),
    ):  # fmt: skip
        done = archived.pgw("backup", "list", config=config)
        assert done.returncode == 1
        assert done.stderr == f"error: manifest {manifest} cannot be read: {reason}\n"
    assert archived.pgw("backup", "verify", config=with_key).returncode == 0


def test_restore_refuses_a_non_empty_directory_unless_delta(archived: Archived) -> None:
    archived.pgbench_init(1)
    archived.json("backup", "create")
    archived.archive_current_wal()
    target = owned_directory(archived.directory, "restored", archived.lab.os_user)
    precious = target / "precious.txt"
    precious.write_text("keep me")
    refused = archived.pgw("restore", "--target-dir", str(target))
    assert refused.returncode == 1
    assert refused.stderr == (
        f"error: {target} is not empty; pass --delta to restore over it (files whose content "
        "matches are kept, others replaced or removed)\n"
    )
    assert precious.read_text() == "keep me"

    precious.unlink()
    assert archived.pgw("restore", "--target-dir", str(target)).returncode == 0
    # Damage the copy: change a catalog file, remove one, add a stray.
    (target / "PG_VERSION").write_text("14\n")
    (target / "global" / "pg_filenode.map").unlink()
    (target / "base" / "stray").write_bytes(b"x" * 100)
    delta = archived.json("restore", "--target-dir", str(target), "--delta")
    # PG_VERSION, pg_filenode.map, postgresql.auto.conf (the first restore added recovery
    # settings to it) and pg_control, always written anew.
    assert delta["files_written"] == 4
    assert delta["files_kept"] > 900
    assert delta["files_removed"] >= 1
    assert not (target / "base" / "stray").exists()
    member = archived.start(target)
    assert archived.query(member, "SELECT count(*) FROM pgbench_accounts") == [(100_000,)]


@pytest.fixture
def small_disk(archived: Archived) -> Iterator[Path]:
    mount = archived.directory / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_restore_stops_cleanly_when_the_disk_fills(archived: Archived, small_disk: Path) -> None:
    archived.pgbench_init(2)
    archived.json("backup", "create")
    target = small_disk / "restored"
    done = archived.pgw("restore", "--target-dir", str(target))
    assert done.returncode == 1
    assert done.stderr == (
        f"error: restore into {target} stopped: no space left on device; free space and run "
        "it again with --delta (the directory cannot start as it is)\n"
    )
    assert not (target / "global" / "pg_control").exists()
    assert not list(target.rglob("*.pgwarden-restore"))


def test_a_standby_is_backed_up_only_when_asked(make_cluster: Callable[..., Lab]) -> None:
    lab = make_cluster(nodes=2)
    work = owned_directory(lab.directory, "work", lab.os_user)
    store = owned_directory(work, "store", lab.os_user)
    primary, standby = (m.name for m in lab.members)
    archived = Archived(lab, primary, work, {"type": "fs", "directory": str(store)})
    standby_config = archived.write_config("standby.yml", member=standby)
    archived.pgbench_init(1)
    # A standby's backup starts at its latest restartpoint, which follows the primary's
    # checkpoints: make one after archiving went to pgwarden, and let the standby replay it.
    archived.sql("CHECKPOINT")
    (position,) = archived.sql("SELECT pg_current_wal_lsn()")[0]
    poll_until(
        lambda: archived.sql(f"SELECT pg_last_wal_replay_lsn() >= '{position}'", standby)[0][0],
        30.0,
    )

    refused = archived.pgw("backup", "create", config=standby_config)
    assert refused.returncode == 1
    assert refused.stderr == f"error: {standby} is a standby: pass --from-standby to back it up\n"
    wrong = archived.pgw("backup", "create", "--from-standby")
    assert wrong.stderr == f"error: --from-standby was given but {primary} is the primary\n"

    backup = archived.json("backup", "create", "--from-standby", config=standby_config)
    assert backup["from_standby"] is True and backup["member"] == standby
    target = archived.target("restored")
    assert archived.pgw("restore", "--target-dir", str(target)).returncode == 0
    member = archived.start(target)
    assert archived.query(member, "SELECT count(*) FROM pgbench_accounts") == [(100_000,)]


# ----------------------------------------------------------------------------- S3 endpoint


@pytest.fixture
def archived_s3(make_cluster: Callable[..., Lab], services: Lab) -> Iterator[Archived]:
    lab = make_cluster(nodes=1)
    work = owned_directory(lab.directory, "work", lab.os_user)
    endpoint = services.s3
    assert endpoint is not None
    prefix = f"backup-test-{lab.lab_id}"
    storage = s3_storage(endpoint, prefix, work / "s3-credentials", lab.os_user)
    archived = Archived(lab, lab.members[0].name, work, storage)
    yield archived
    store = archived.open_store()
    store.delete_many([info.key for info in store.list()])


def test_storage_down_in_the_middle_of_a_backup(archived_s3: Archived, services: Lab) -> None:
    archived = archived_s3
    archived.pgbench_init(4)
    endpoint = services.s3
    assert endpoint is not None
    backup = subprocess.Popen(
        archived.argv("backup", "create", "-j", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=archived.environment(),
    )
    cut = None
    try:
        archived.wait_for_objects("lab/basebackups/")
        cut = services.cut("127.0.0.1", endpoint.host, refuse=True)
        _, stderr = backup.communicate(timeout=120)
    finally:
        if cut is not None:
            services.heal(cut)
        if backup.poll() is None:
            backup.kill()
            backup.wait()
    assert backup.returncode == 1
    # Structured events for the log, then the sentence for the person.
    *events, sentence = stderr.strip().splitlines()
    assert [json.loads(e)["event"] for e in events] == ["backup.failed", "backup.cleanup_deferred"]
    assert sentence.startswith("error: backup ") and "failed: S3 endpoint" in sentence
    assert archived.json("backup", "list") == []
    listed = archived.json("backup", "list", "--all")
    assert all(entry.get("incomplete") for entry in listed)

    again = archived.json("backup", "create")
    assert [b["id"] for b in archived.json("backup", "list")] == [again["id"]]
    assert archived.pgw("backup", "verify").returncode == 0


def test_a_backup_to_s3_restores(archived_s3: Archived) -> None:
    archived = archived_s3
    archived.pgbench_init(1)
    archived.json("backup", "create")
    archived.sql("CREATE TABLE after_backup AS SELECT 7 AS answer")
    archived.archive_current_wal()
    target = archived.target("restored")
    done = archived.pgw("restore", "--target-dir", str(target))
    assert done.returncode == 0, done.stderr
    member = archived.start(target)
    assert archived.query(member, "SELECT answer FROM after_backup") == [(7,)]
    restored = json.loads(archived.pgw("backup", "list", "-o", "json").stdout)
    assert len(restored) == 1


@pytest.fixture
def strict_s3() -> Iterator[str]:
    """A second S3 endpoint that checks credentials (moto with authentication on), which
    knows no access key at all: every request is refused as S3 refuses unknown keys."""
    port = free_port("127.0.0.1")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=os.environ | {"INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        poll_until(lambda: _accepts("127.0.0.1", port), 15.0)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait()


def _accepts(host: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) == 0


def test_wrong_credentials_are_one_sentence(archived: Archived, strict_s3: str) -> None:
    credentials = archived.directory / "wrong-credentials"
    credentials.write_text("[default]\naws_access_key_id = nobody\naws_secret_access_key = x\n")
    credentials.chmod(0o600)
    archived.storage = {
        "type": "s3", "bucket": "pgwarden", "endpoint_url": strict_s3, "region": "us-east-1",
        "credentials_file": str(credentials), "force_path_style": True,
    }  # fmt: skip
    config = archived.write_config("strict.yml")
    for args in (("backup", "list"), ("backup", "create")):
        done = archived.pgw(*args, config=config)
        assert done.returncode == 1
        sentence = done.stderr.strip().splitlines()[-1]
        assert sentence.startswith("error: ") and sentence.count(". ") == 0
        assert f"{strict_s3} refused the S3 credentials (InvalidAccessKeyId)" in sentence


def test_retention_expires_old_backups_and_the_wal_only_they_needed(archived: Archived) -> None:
    config = archived.write_config("keep-one.yml", retention={"full_count": 1})
    archived.pgbench_init(1)
    first = archived.json("backup", "create", config=config)
    archived.archive_current_wal()
    second = archived.json("backup", "create", config=config)
    assert second["expired"] == [first["id"]]
    assert [b["id"] for b in archived.json("backup", "list")] == [second["id"]]
    assert not stored_objects(archived, first["id"])
    wal = Path(archived.storage["directory"]) / "lab" / "wal" / "00000001"
    oldest = min(p.name for p in wal.iterdir() if not p.name.startswith("."))
    assert oldest <= second["wal"].split("..")[0]  # what the kept backup needs is there
    assert oldest > first["wal"].split("..")[1]  # what only the expired one needed is gone
    assert archived.pgw("check").returncode == 0
    dry = archived.json("backup", "expire", "--dry-run", config=config)
    assert dry["backups"] == [] and dry["keep"] == [second["id"]]


def test_a_corrupted_page_is_reported_by_the_backup(archived: Archived) -> None:
    archived.pgbench_init(1)
    ((relation,),) = archived.sql("SELECT pg_relation_filepath('pgbench_accounts')")
    archived.sql("CHECKPOINT")  # the page on disk is what PostgreSQL last wrote
    path = archived.lab.member(archived.name).data_dir / relation
    with path.open("r+b") as data:  # a bit rots in block 3, behind PostgreSQL's back
        data.seek(3 * 8192 + 4000)
        byte = data.read(1)
        data.seek(3 * 8192 + 4000)
        data.write(bytes([byte[0] ^ 0x10]))
    done = archived.pgw("backup", "create", "-o", "json")
    assert done.returncode == 0, done.stderr
    backup = json.loads(done.stdout)
    assert backup["bad_pages"] == 1
    assert (
        f"warning: {relation}: page checksum failed in block(s) 3"
        in archived.pgw("backup", "show", backup["id"]).stderr
    )
    shown = archived.json("backup", "show", backup["id"])
    assert shown["bad_pages_by_file"] == {relation: [3]}


def test_restore_to_each_kind_of_target_shows_exactly_the_rows_before_it(
    archived: Archived,
) -> None:
    archived.sql("CREATE TABLE t (n int)")
    backup = archived.json("backup", "create")
    archived.sql("INSERT INTO t VALUES (1)")
    ((after_one,),) = archived.sql("SELECT clock_timestamp()")
    ((lsn_one,),) = archived.sql("SELECT pg_current_wal_lsn()")
    archived.sql("SELECT pg_create_restore_point('after-one')")
    time.sleep(0.2)
    ((xid_two,),) = archived.sql("INSERT INTO t VALUES (2) RETURNING txid_current()")
    archived.sql("INSERT INTO t VALUES (3)")
    archived.archive_current_wal()

    expected = {
        ("--target", "immediate"): [],
        ("--target-name", "after-one"): [1],
        ("--target-time", after_one.isoformat()): [1],
        ("--target-lsn", str(lsn_one)): [1],
        ("--target-xid", str(xid_two)): [1, 2],
        (): [1, 2, 3],
    }
    for number, (options, rows) in enumerate(expected.items()):
        target = archived.target(f"restored-{number}")
        done = archived.pgw("restore", "--target-dir", str(target), *options)
        assert done.returncode == 0, (options, done.stderr)
        # A copy started as restored never writes into the archive it came from.
        assert auto_conf(target)["archive_mode"] == "off"
        member = archived.start(target)
        found = [n for (n,) in archived.query(member, "SELECT n FROM t ORDER BY n")]
        assert found == rows, options

    before = (backup_time(archived, backup["id"]) - timedelta(hours=1)).isoformat()
    refused = archived.pgw("restore", "--target-dir", str(archived.target("x")),
                           "--target-time", before)  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: --target-time {before} is before the oldest backup")
    for options, message in (
        (("--target-lsn", "FF/0"), "error: --target-lsn FF/0 is beyond the end of the archive"),
        (("--target-timeline", "7"), "error: timeline 7 is not in the archive's history"),
    ):
        refused = archived.pgw("restore", "--target-dir", str(archived.target("x")), *options)
        assert refused.returncode == 1 and refused.stderr.startswith(message), refused.stderr


def auto_conf(data_dir: Path) -> dict[str, str]:
    """postgresql.auto.conf's settings; the last line of a name wins, as in PostgreSQL."""
    found = {}
    for line in (data_dir / "postgresql.auto.conf").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            found[name.strip()] = value.strip().strip("'")
    return found


def test_wal_serve_feeds_a_restored_copy_from_its_spool(archived: Archived) -> None:
    archived.sql("CREATE TABLE t (n int)")
    archived.json("backup", "create")
    for n in range(4):
        archived.sql(f"INSERT INTO t VALUES ({n})")
        archived.archive_current_wal()
    target = archived.target("served")
    done = archived.pgw("restore", "--target-dir", str(target))
    assert done.returncode == 0, done.stderr
    wal_socket = target.with_name(target.name + ".wal.sock")
    serving = subprocess.Popen(
        archived.argv("wal-serve", "--data-dir", str(target)), env=archived.environment(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        poll_until(wal_socket.exists, 30.0)
        # A second server for the same copy is refused: it would steal the socket.
        refused = archived.pgw("wal-serve", "--data-dir", str(target))
        assert refused.returncode == 1 and "already serves" in refused.stderr
        member = archived.start(target)
        rows = archived.query(member, "SELECT n FROM t ORDER BY n")
        assert rows == [(0,), (1,), (2,), (3,)]
    finally:
        serving.terminate()
        _, err = serving.communicate(timeout=60)
    served = re.search(r"served (\d+) WAL files \((\d+) prefetched\)", err)
    assert served is not None, err
    assert int(served[1]) >= 4 and int(served[2]) >= 1  # replay went through the spool
    assert not wal_socket.exists()


def test_a_restore_for_disaster_recovery_keeps_archiving_when_asked(archived: Archived) -> None:
    archived.json("backup", "create")
    target = archived.target("dr")
    done = archived.pgw("restore", "--target-dir", str(target), "--archive")
    assert done.returncode == 0, done.stderr
    assert "archive_mode" not in auto_conf(target)


def backup_time(archived: Archived, ident: str) -> datetime:
    return datetime.fromisoformat(archived.json("backup", "show", ident)["stop_time"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--target-lsn", "zz"), "--target-lsn 'zz' is not a WAL position like 0/3000028"),
        (("--target-time", "2026-11-24 06:00"),
         "--target-time '2026-11-24 06:00' needs a time zone"),
        (("--target-xid", "x"), "--target-xid 'x' is not a transaction id"),
        (("--target-timeline", "next"),
         "--target-timeline 'next' must be latest, current or a timeline number"),
        (("--target-xid", "5", "--target-name", "a"), "give at most one of --target-time"),
    ],
)  # fmt: skip
def test_a_malformed_target_is_one_sentence(
    options: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    config = tmp_path / "pgwarden.yml"
    config.write_text(
        "cluster: main\nmember: db1\ndcs: {hosts: ['127.0.0.1:2181']}\n"
        f"storage: {{type: fs, directory: {tmp_path / 'store'}}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pgwarden", "restore", "-c", str(config),
         "--target-dir", str(tmp_path / "t"), *options],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: {message}")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "t").exists()


def test_a_drill_restores_checks_and_reports(archived: Archived) -> None:
    checks = [
        {"name": "accounts", "sql": "SELECT count(*) FROM pgbench_accounts", "min": 100000},
        {"name": "too-many", "sql": "SELECT count(*) FROM pgbench_accounts", "min": 200000},
    ]
    drill = {"schedule": None, "checks": checks, "amcheck_depth": "thorough"}
    config = archived.write_config("drill.yml", drill=drill)
    archived.pgbench_init(1)
    backup = archived.json("backup", "create", config=config)
    archived.archive_current_wal()

    done = archived.pgw("drill", "run", "-o", "json", config=config)
    assert done.returncode == 1  # one check fails
    report = json.loads(done.stdout)
    assert report["backup"] == backup["id"] and report["error"] is None
    results = {c["name"]: (c["ok"], c["detail"]) for c in report["checks"]}
    for name in ("archive", "consistent", "replay", "amcheck", "accounts", "checksums"):
        assert results[name][0], (name, results[name])
    assert results["too-many"] == (
        False,
        "'SELECT count(*) FROM pgbench_accounts' returned 100000, below the minimum 200000",
    )
    assert results["replay"][0], results["replay"]  # to the newest archived segment
    assert results["amcheck"][1] == "pg_amcheck (thorough) found no corruption"
    assert (report["checks_passed"], report["checks_failed"]) == (6, 1)
    assert report["rto_s"] >= report["restore_s"] + report["replay_s"] - 0.01
    assert report["recovered_lsn"] and report["downloaded_bytes"] > 0
    # Replay took the WAL from the drill's own fetcher, not one download per process.
    assert report["wal_files_fetched"] >= 1
    listed = archived.json("drill", "list", config=config)
    assert [r["id"] for r in listed] == [report["id"]]
    assert not list(Path(tempfile.gettempdir()).glob("pgwarden-drill-*"))  # removed
    # What the agent's /metrics reports of them, read from the same storage.
    stored = read_stored_summary(BackupContext.from_settings(load_config(config)))
    assert stored["backups"] == 1 and stored["error"] is None
    assert stored["backup"]["id"] == backup["id"] and stored["backup"]["kind"] == "full"
    assert stored["backup"]["db_bytes"] == backup["db_bytes"]
    assert stored["backup"]["stored_bytes"] >= backup["stored_bytes"] > 0
    assert 0 <= time.time() - stored["backup"]["stop_time"] < 600
    assert stored["drill"]["id"] == report["id"] and stored["drill"]["ok"] is False
    assert stored["drill"]["checks_failed"] == 1 and stored["drill"]["rto_s"] == report["rto_s"]


def drill(archived: Archived) -> dict[str, Any]:
    done = archived.pgw("drill", "run", "-o", "json")
    assert done.returncode == 1, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_a_drill_over_a_flipped_byte_names_the_object(archived: Archived) -> None:
    archived.pgbench_init(1)
    backup = archived.json("backup", "create")
    archived.archive_current_wal()
    victim = max(stored_objects(archived, backup["id"]), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x04
    victim.write_bytes(bytes(data))
    report = drill(archived)
    key = str(victim.relative_to(archived.storage["directory"]))
    assert report["error"].startswith("restore into ") and f"object {key}" in report["error"]


def test_a_drill_with_a_missing_wal_segment_names_it(archived: Archived) -> None:
    archived.pgbench_init(1)
    backup = archived.json("backup", "create")
    archived.archive_current_wal()
    first = backup["wal"].split("..")[0]
    (Path(archived.storage["directory"]) / "lab" / "wal" / "00000001" / first).unlink()
    report = drill(archived)
    assert report["error"] == f"the backup's own WAL is not all archived: missing {first}"


def test_a_damaged_wal_object_after_the_backup_fails_the_drill(archived: Archived) -> None:
    # PostgreSQL takes a WAL file it cannot fetch for the end of the archive and promotes
    # early: only comparing where replay stopped with the archive's end tells.
    archived.pgbench_init(1)
    backup = archived.json("backup", "create")
    for _ in range(3):
        archived.sql("INSERT INTO pgbench_history SELECT 1, 1, 1, 1, now()")
        archived.archive_current_wal()
    last = backup["wal"].split("..")[1]
    wal = Path(archived.storage["directory"]) / "lab" / "wal" / "00000001"
    victim = min(p for p in wal.iterdir() if len(p.name) == 24 and p.name > last)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    report = drill(archived)
    results = {c["name"]: (c["ok"], c["detail"]) for c in report["checks"]}
    assert results["archive"][0]  # every object is there
    ok, detail = results["replay"]
    assert not ok and "before the newest archived segment" in detail, detail


def test_a_heap_page_only_amcheck_can_see_is_caught(archived: Archived) -> None:
    archived.pgbench_init(1)
    ((relation,),) = archived.sql("SELECT pg_relation_filepath('pgbench_accounts')")
    archived.sql("CHECKPOINT")
    path = archived.lab.member(archived.name).data_dir / relation
    block = 5
    with path.open("r+b") as data:
        data.seek(block * 8192)
        page = bytearray(data.read(8192))
        # The first tuple's header claims its data starts 8 bytes later than it does, and
        # the page checksum is recomputed: only a check of the tuples themselves can tell.
        (pointer,) = struct.unpack_from("<I", page, 24)
        offset = pointer & 0x7FFF
        page[offset + 22] += 8  # t_hoff
        struct.pack_into("<H", page, 8, 0)
        struct.pack_into("<H", page, 8, int(page_checksums(bytes(page), block)[0]))
        data.seek(block * 8192)
        data.write(page)
    backup = archived.json("backup", "create")
    assert backup["bad_pages"] == 0  # the checksum is right: the backup cannot tell
    archived.archive_current_wal()
    report = drill(archived)
    results = {c["name"]: c for c in report["checks"]}
    assert report["error"] is None
    assert not results["amcheck"]["ok"]
    assert f"block {block}, offset 1" in results["amcheck"]["detail"]
    assert results["checksums"]["ok"]


def test_a_drill_refuses_a_scratch_disk_without_room_and_stops_at_its_time_limit(
    archived: Archived, small_disk: Path
) -> None:
    archived.pgbench_init(1)
    backup = archived.json("backup", "create")
    archived.archive_current_wal()

    done = archived.pgw("drill", "run", "-o", "json", "--scratch-dir", str(small_disk))
    assert done.returncode == 1, done.stderr
    refused = json.loads(done.stdout)
    assert refused["error"].startswith(
        f"not enough disk space for the drill in {small_disk}: 12.0 MiB free, "
    )
    assert f"(the backup's {backup['db_bytes'] / 1024**2:.1f} MiB of data" in refused["error"]
    assert refused["checks"] == [] and not list(small_disk.iterdir())

    time.sleep(1.0)  # drill ids have a resolution of one second
    done = archived.pgw("drill", "run", "-o", "json", "--max-duration", "0.3")
    assert done.returncode == 1, done.stderr
    stopped = json.loads(done.stdout)
    assert stopped["error"] == (
        "the drill ran past its time limit (drill.max_duration: 0.3 s) and was stopped"
    )
    assert not list(Path(tempfile.gettempdir()).glob("pgwarden-drill-*"))  # cleaned up
    listed = archived.json("drill", "list")
    assert [(r["id"], r["ok"]) for r in listed] == [(refused["id"], False), (stopped["id"], False)]
