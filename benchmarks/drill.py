"""A restore drill end to end: how long recovery takes and how much it recovers.

One lab member archiving through `pgwarden wal-push` to the lab S3 endpoint;
`pgbench -i -s S`, a full backup, then pgbench for --seconds (WAL the drill must replay),
the last segment archived. Then `pgwarden drill run -o json`: restore into a scratch
instance, replay to the end of the archive, pg_amcheck, pg_checksums and one SQL check
(the row count of pgbench_accounts).

Keys: restore_s, replay_s, rto_s, rpo_s, checks_passed, checks_failed, plus db_bytes and
the WAL replayed. Prints JSON on stdout (and to --json FILE); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pgwarden.lab import Lab, LabSpec, scratch_directory
from pgwarden.lab.archiving import (
    member_config,
    s3_storage,
    use_pgwarden_archive,
    write_config,
)
from pgwarden.lab.postgres import chown_to


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pgwarden(*args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "pgwarden", *args, "-o", "json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if not done.stdout.strip():
        raise RuntimeError(f"pgwarden {' '.join(args)} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def run(scale: int, seconds: int) -> dict[str, Any]:
    lab = Lab.create(
        scratch_directory("drillbench"), LabSpec(zookeeper_nodes=0, s3=True, postgres_nodes=1)
    )
    try:
        name = lab.members[0].name
        work = lab.directory / "work"
        work.mkdir(mode=0o700)
        chown_to(work, lab.os_user)
        assert lab.s3 is not None
        storage = s3_storage(lab.s3, "drillbench", work / "s3.credentials", lab.os_user)
        scale_check = {"name": "accounts", "sql": "SELECT count(*) FROM pgbench_accounts",
                       "equals": scale * 100000}  # fmt: skip
        config = write_config(
            work / "pgwarden.yml",
            member_config(lab, name, storage, drill={"schedule": None, "checks": [scale_check]}),
            lab.os_user,
        )
        use_pgwarden_archive(lab, name, config, None)
        dsn = lab.member(name).dsn()
        env = dict(os.environ) | {"PGPASSWORD": lab.credentials.superuser_password}
        pgbench = str(lab.bin_dir / "pgbench")
        log(f"pgbench -i -s {scale}")
        subprocess.run([pgbench, "-i", "-q", "-s", str(scale), dsn], env=env, check=True,
                       capture_output=True)  # fmt: skip
        backup = pgwarden("backup", "create", "-c", str(config))
        log(f"backup {backup['id']}; pgbench for {seconds} s")
        subprocess.run([pgbench, "-n", "-c", "4", "-j", "2", "-T", str(seconds), dsn], env=env,
                       check=True, capture_output=True)  # fmt: skip
        with lab.connect(name, autocommit=True) as conn:
            (segment,) = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                (done,) = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
                if done and done >= segment:
                    break
                time.sleep(0.2)
        log("drill run")
        report = pgwarden("drill", "run", "-c", str(config))
        return {
            "scale": scale,
            "db_bytes": backup["db_bytes"],
            "pgbench_seconds": seconds,
            "restore_s": report["restore_s"],
            "replay_s": report["replay_s"],
            "rto_s": report["rto_s"],
            "rpo_s": report["rpo_s"],
            "wal_files_fetched": report.get("wal_files_fetched"),
            "wal_files_prefetched": report.get("wal_files_prefetched"),
            "checks_passed": report["checks_passed"],
            "checks_failed": report["checks_failed"],
            "checks": [(c["name"], c["ok"]) for c in report["checks"]],
            "error": report["error"],
        }
    finally:
        lab.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=20, help="pgbench after the backup")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.scale, args.seconds)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
