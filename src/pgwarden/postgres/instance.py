"""The local PostgreSQL instance: initdb, configure, start, stop, kill, promote, rewind, clone.

The agent is the postmaster's parent: `start` returns the Popen for it to reap. Programs
run as `spec.os_user` (privileges dropped for the child only when the agent is root), in
`/` (initdb needs a readable cwd), with `LC_ALL=C` (output is parsed) and no inherited
`PG*` variables. Passwords travel in files only, never in argv, the environment or errors.

A clone or initdb in progress is marked by `<data_dir>.incomplete`: until it is removed,
`is_initialized` is False, so a copy interrupted by a crash is never started.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import structlog

from pgwarden import procfs
from pgwarden.postgres import sql
from pgwarden.postgres.conf import (
    Endpoint,
    InstanceSpec,
    passfile_path,
    render_files,
    render_passfile,
    replication_role_sql,
    source_conninfo,
)
from pgwarden.postgres.sql import PgError

__all__ = ["Instance", "PgError", "RewindError"]

log = structlog.get_logger(__name__)

StopMode = Literal["fast", "immediate", "smart"]
_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
# How long each escalation step (SIGQUIT, then SIGKILL) may take after `timeout`.
_ESCALATION_WAIT = 5.0


class RewindError(PgError):
    """pg_rewind failed; the message ends with its output. Re-cloning is the way out."""


class Instance:
    """Control of the local PostgreSQL instance described by `spec`."""

    def __init__(self, spec: InstanceSpec, log_path: Path) -> None:
        self.spec = spec
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.spec.data_dir

    @property
    def _incomplete_marker(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".incomplete")

    def is_initialized(self) -> bool:
        """Whether the data directory holds a complete cluster (PG_VERSION, no marker)."""
        return (self.data_dir / "PG_VERSION").exists() and not self._incomplete_marker.exists()

    def controldata(self) -> dict[str, str]:
        """pg_controldata's output as `{field: value}`."""
        out = self._run([self._bin("pg_controldata"), "-D", str(self.data_dir)], "pg_controldata")
        pairs = (line.split(":", 1) for line in out.splitlines() if ":" in line)
        return {key.strip(): value.strip() for key, value in pairs}

    def system_identifier(self) -> str | None:
        """The cluster's system identifier, or None when not initialized."""
        if not self.is_initialized():
            return None
        return self.controldata().get("Database system identifier")

    def postmaster_pid(self) -> int | None:
        """The running postmaster's PID (ours, or from postmaster.pid, verified), or None."""
        if self._proc is not None and self._proc.poll() is None and procfs.alive(self._proc.pid):
            return self._proc.pid
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, PermissionError, ValueError):
            return None
        self._reap(pid)
        st = procfs.stat(pid)
        if st is None or st.state in ("Z", "X") or st.comm not in ("postgres", "postmaster"):
            return None
        try:
            # The postmaster's working directory is its data directory.
            cwd = Path(f"/proc/{pid}/cwd").readlink()
        except PermissionError:
            return pid  # another user's process we may not inspect: trust name and file
        except (FileNotFoundError, ProcessLookupError):
            return None
        return pid if cwd == self.data_dir.resolve() else None

    def initdb(self) -> None:
        """Create the cluster: checksums, scram passwords, UTF8, locale C, replication role."""
        spec = self.spec
        if self.is_initialized():
            raise PgError(f"{self.data_dir} already holds a database cluster; not running initdb")
        leftover = self.data_dir.is_dir() and any(self.data_dir.iterdir())
        if leftover and not self._incomplete_marker.exists():
            raise PgError(f"{self.data_dir} is not empty; not running initdb over unknown files")
        started = time.monotonic()
        self._empty_data_dir()
        self._incomplete_marker.touch()
        fd, name = tempfile.mkstemp(prefix="pgwarden-initdb-")
        pwfile = Path(name)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(spec.superuser_password + "\n")
            self._chown(pwfile)
            argv = [self._bin("initdb"), "-D", str(self.data_dir), "-U", spec.superuser]
            argv += [f"--pwfile={pwfile}", "--auth=scram-sha-256", "--data-checksums"]
            self._run([*argv, "--encoding=UTF8", "--locale=C", "--no-instructions"], "initdb")
        finally:
            pwfile.unlink(missing_ok=True)
        if spec.replication_user != spec.superuser:
            self._create_replication_role()
        self._incomplete_marker.unlink()
        log.info("postgres.initdb", data_dir=str(self.data_dir), seconds=_since(started))

    def _create_replication_role(self) -> None:
        # Single-user mode before the first start: the role exists before any replica
        # can try to clone, and the password travels on stdin, not argv.
        statement = replication_role_sql(self.spec) + "\n\n"
        argv = [self._bin("postgres"), "--single", "-j", "-D", str(self.data_dir)]
        # Never echo the failing statement (it holds the password) into the output.
        argv += ["-c", "log_min_error_statement=panic", "-c", "password_encryption=scram-sha-256"]
        out = self._run([*argv, "postgres"], "creating the replication role", stdin=statement)
        if "ERROR:" in out or "FATAL:" in out:
            raise PgError(f"creating the replication role failed: {_tail(out, self._secrets())}")

    def configure(self, *, leader: Endpoint | None, synchronous_standby_names: str = "") -> None:
        """Rewrite the managed files for a primary (`leader` None) or a standby of `leader`.

        Standby settings go at the end of postgresql.conf, with standby.signal; the
        password file is `<data_dir>.pgpass`. Settings take effect at the next start, or
        on reload for those PostgreSQL reloads (primary_conninfo, synchronous_standby_names).
        """
        if not self.is_initialized():
            raise PgError(f"{self.data_dir} holds no database cluster to configure")
        if leader is not None and leader.name == self.spec.name:
            raise PgError(f"{self.spec.name} cannot be a standby of itself")
        auto = self.data_dir / "postgresql.auto.conf"
        files = render_files(
            self.spec,
            leader=leader,
            synchronous_standby_names=synchronous_standby_names,
            auto_conf=auto.read_text() if auto.exists() else None,
        )
        self._write_passfile()
        for name, text in files.items():
            if text is None:
                (self.data_dir / name).unlink(missing_ok=True)
            else:
                self._write(self.data_dir / name, text)

    def _write_passfile(self) -> None:
        self._write(passfile_path(self.spec), render_passfile(self.spec))

    def start(self) -> subprocess.Popen[bytes]:
        """Spawn the postmaster in its own process group, logging to `log_path`; not waited."""
        if not self.is_initialized():
            raise PgError(f"{self.data_dir} holds no complete database cluster to start")
        running = self.postmaster_pid()
        if running is not None:
            raise PgError(f"PostgreSQL {self.spec.name} already runs with PID {running}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self._proc = self._spawn(
                [self._bin("postgres"), "-D", str(self.data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        log.info("postgres.started", pid=self._proc.pid, data_dir=str(self.data_dir))
        return self._proc

    def wait_ready(self, timeout: float) -> None:
        """Wait until the instance accepts SQL connections (a hot standby's included)."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_running()
            try:
                conn = sql.connect(self.spec, timeout=max(0.0, deadline - time.monotonic()))
            except sql.SqlError:
                pass
            else:
                conn.close()
                return
            if time.monotonic() >= deadline:
                self._check_running()
                raise PgError(
                    f"PostgreSQL {self.spec.name} did not accept connections within "
                    f"{timeout:g} s; its log ends with: {self._log_tail()}"
                )
            time.sleep(0.05)

    def _check_running(self) -> None:
        """Raise at once when the postmaster is dead: our child's exit, or postmaster.pid."""
        code = self._proc.poll() if self._proc is not None else None
        if code is not None or (self._proc is None and self.postmaster_pid() is None):
            state = "is not running" if code is None else f"exited with code {code} while starting"
            tail = self._log_tail()
            raise PgError(f"PostgreSQL {self.spec.name} {state}; its log ends with: {tail}")

    def stop(self, mode: StopMode = "fast", timeout: float = 30.0) -> None:
        """Shut the postmaster down in `mode`; escalate to immediate, then SIGKILL, after
        `timeout`. Returns when it is gone; no-op when it does not run."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        st = procfs.stat(pid)
        ticks = st.start_ticks if st else None
        started = time.monotonic()
        self._signal(pid, _STOP_SIGNALS[mode])
        # A frozen (SIGSTOP) postmaster or backend cannot act on the signal until it runs.
        self._signal(pid, signal.SIGCONT, tree=True)
        gone = self._wait_gone(pid, ticks, timeout)
        if not gone and mode != "immediate":
            log.warning("postgres.stop_escalated", pid=pid, mode=mode, to="immediate")
            self._signal(pid, signal.SIGQUIT)
            gone = self._wait_gone(pid, ticks, _ESCALATION_WAIT)
        if not gone:
            log.warning("postgres.stop_escalated", pid=pid, mode=mode, to="kill")
            self._signal(pid, signal.SIGKILL, tree=True)
            gone = self._wait_gone(pid, ticks, _ESCALATION_WAIT)
        if not gone:
            raise PgError(f"PostgreSQL {self.spec.name} (PID {pid}) survived SIGKILL")
        log.info("postgres.stopped", pid=pid, mode=mode, seconds=_since(started))

    def kill(self) -> None:
        """SIGKILL the postmaster and all its children at once (fencing); waits at most 1 s."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        st = procfs.stat(pid)
        self._signal(pid, signal.SIGKILL, tree=True)
        gone = self._wait_gone(pid, st.start_ticks if st else None, 1.0)
        log.warning("postgres.killed", pid=pid, gone=gone)

    def _signal(self, pid: int, sig: int, *, tree: bool = False) -> None:
        """Signal the postmaster; with `tree`, also each child's process group (every
        backend leads a session of its own, so the postmaster's group is just itself)."""
        with contextlib.suppress(ProcessLookupError):
            if not tree:
                os.kill(pid, sig)
                return
            # Stopped, the postmaster cannot fork a child we would miss.
            os.kill(pid, signal.SIGSTOP)
            try:
                _wait_state(pid, "T", 0.2)
                for child in procfs.children(pid):
                    with contextlib.suppress(ProcessLookupError):
                        (os.killpg if os.getpgid(child) == child else os.kill)(child, sig)
                os.kill(pid, sig)
            finally:
                if sig != signal.SIGKILL:
                    os.kill(pid, signal.SIGCONT)

    def _wait_gone(self, pid: int, start_ticks: int | None, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self._reap(pid)
            if not procfs.alive(pid, start_ticks):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def _reap(self, pid: int) -> None:
        """Collect `pid`'s exit status if it is our child, so it does not linger as a zombie."""
        if self._proc is not None and self._proc.pid == pid:
            self._proc.poll()
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)

    def promote(self, timeout: float = 10.0) -> None:
        """Promote this standby (pg_promote, waiting); PgError if it is still in recovery."""
        started = time.monotonic()
        sql.promote(self.spec, timeout)
        log.info("postgres.promoted", seconds=_since(started))

    def rewind(self, source: Endpoint, timeout: float = 600.0) -> None:
        """pg_rewind this stopped instance from `source` (superuser connection).

        The caller must CHECKPOINT the source first (`sql.checkpoint`), so its pg_control
        shows the new timeline, and call `configure` afterwards: pg_rewind copies the
        source's configuration files.
        """
        self._require_stopped("rewind")
        self._write_passfile()
        info = source_conninfo(self.spec, source, user=self.spec.superuser, purpose="rewind")
        argv = [self._bin("pg_rewind"), "--target-pgdata", str(self.data_dir)]
        argv += ["--source-server", info]
        if self.spec.restore_command is not None:
            argv.append("--restore-target-wal")  # WAL no longer in pg_wal, from the archive
        started = time.monotonic()
        try:
            out = self._run(argv, f"pg_rewind from {source.name}", timeout=timeout)
        except PgError as exc:
            raise RewindError(str(exc)) from None
        output = _tail(out, self._secrets())
        log.info("postgres.rewound", source=source.name, seconds=_since(started), output=output)

    def clone(self, source: Endpoint, timeout: float = 3600.0) -> None:
        """Replace the data directory with a base backup of `source` (no slot, no -R)."""
        self._require_stopped("clone")
        started = time.monotonic()
        self._empty_data_dir()
        self._incomplete_marker.touch()
        self._write_passfile()
        info = source_conninfo(self.spec, source, user=self.spec.replication_user, purpose="clone")
        argv = [self._bin("pg_basebackup"), "-d", info, "-D", str(self.data_dir)]
        argv += ["-X", "stream", "-c", "fast", "--no-password"]
        try:
            self._run(argv, f"pg_basebackup from {source.name}", timeout=timeout)
        except PgError:
            self._empty_data_dir()
            raise
        self._incomplete_marker.unlink()
        log.info("postgres.cloned", source=source.name, seconds=_since(started))

    def fill(self, what: str, write: Callable[[Path, tuple[int, int] | None], object]) -> None:
        """Replace the data directory with what `write(data_dir, owner)` puts there (a
        restore from a backup); `owner` is the (uid, gid) files must get, or None."""
        self._require_stopped(what)
        started = time.monotonic()
        self._empty_data_dir()
        self._incomplete_marker.touch()
        try:
            write(self.data_dir, self.owner())
        except BaseException:
            self._empty_data_dir()
            raise
        self._incomplete_marker.unlink()
        log.info("postgres.filled", what=what, seconds=_since(started))

    def remove_data(self) -> None:
        """Delete everything in the data directory (the directory itself stays)."""
        self._require_stopped("remove the data of")
        self._empty_data_dir()
        self._incomplete_marker.unlink(missing_ok=True)
        log.info("postgres.data_removed", data_dir=str(self.data_dir))

    def _require_stopped(self, action: str) -> None:
        pid = self.postmaster_pid()
        if pid is not None:
            error = RewindError if action == "rewind" else PgError
            raise error(f"cannot {action} {self.spec.name}: PostgreSQL runs with PID {pid}")

    def _empty_data_dir(self) -> None:
        """An empty data directory, mode 0700, owned by the OS user."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for child in self.data_dir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        self.data_dir.chmod(0o700)
        self._chown(self.data_dir)

    def _bin(self, program: str) -> str:
        return str(self.spec.bin_dir / program)

    def run_program(self, program: str, *args: str, timeout: float = 600.0) -> tuple[bool, str]:
        """Run one of PostgreSQL's programs as its OS user: (exit code 0, output)."""
        try:
            return True, self._run([self._bin(program), *args], program, timeout=timeout)
        except PgError as exc:
            return False, str(exc)

    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) files PostgreSQL reads must get when we are not its OS user."""
        ids = self._ids()
        return None if ids is None else (ids[0], ids[1])

    def _ids(self) -> tuple[int, int, str] | None:
        """(uid, gid, home) to switch to for PostgreSQL's programs, or None to stay as we are."""
        user = self.spec.os_user
        if user is None:
            return None
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise PgError(f"OS user {user!r} for PostgreSQL does not exist") from None
        if entry.pw_uid == os.geteuid():
            return None
        if os.geteuid() != 0:
            raise PgError(f"cannot run PostgreSQL as {user!r}: the agent is neither root nor it")
        return entry.pw_uid, entry.pw_gid, entry.pw_dir

    def _spawn(self, argv: list[str], **io: object) -> subprocess.Popen[bytes]:
        """Start a PostgreSQL program as the OS user in its own process group."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        ids = self._ids()
        if ids is not None:
            env["HOME"] = ids[2]
            env["USER"] = env["LOGNAME"] = self.spec.os_user or ""
        return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
            argv,
            cwd="/",
            env=env,
            process_group=0,
            user=ids[0] if ids else None,
            group=ids[1] if ids else None,
            extra_groups=[] if ids else None,
            **io,
        )

    def _chown(self, path: Path) -> None:
        ids = self._ids()
        if ids is not None:
            os.chown(path, ids[0], ids[1])

    def _write(self, path: Path, text: str, mode: int = 0o600) -> None:
        """Replace `path` atomically with `text`, owned by the OS user."""
        tmp = path.with_name(f".{path.name}.pgwarden-tmp")
        with tmp.open("w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        tmp.chmod(mode)
        self._chown(tmp)
        tmp.replace(path)

    def _run(self, argv: list[str], what: str, *, stdin: str = "", timeout: float = 120.0) -> str:
        """Run a program as the OS user to completion; PgError with its output on failure."""
        # Its own process group: pg_rewind's single-user postgres goes with it on timeout.
        proc = self._spawn(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            raw, _ = proc.communicate(stdin.encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out = proc.communicate()[0].decode(errors="replace")
            raise PgError(
                f"{what} for {self.spec.name} did not finish within {timeout:g} s; "
                f"its output ends with: {_tail(out, self._secrets())}"
            ) from None
        out = raw.decode(errors="replace")
        if proc.returncode != 0:
            raise PgError(
                f"{what} for {self.spec.name} failed with exit code {proc.returncode}: "
                + _tail(out, self._secrets())
            )
        return out

    def _secrets(self) -> list[str]:
        return [self.spec.superuser_password, self.spec.replication_password]

    def _log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return _tail(text, self._secrets())


def _tail(text: str, secrets: list[str], lines: int = 6) -> str:
    """The last lines of program output as one line, with any password masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "********")
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) if kept else "(no output)"


def _wait_state(pid: int, state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = procfs.stat(pid)
        if st is None or st.state == state:
            return
        time.sleep(0.001)


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)
