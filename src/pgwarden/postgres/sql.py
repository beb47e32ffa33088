"""Probes and SQL actions on PostgreSQL members, as the superuser over TCP (psycopg 3).

Every call opens its own short connection and closes it, unless it is given a `Session`
(the HA loop's probes, several a second), and every call has a deadline that holds even
against a frozen server (SIGSTOP): a timer shuts the socket down, which a server-side
statement_timeout could not do. Connecting takes its own timeout on top, at least 2 s
(libpq's minimum, which psycopg follows).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors
from psycopg.rows import TupleRow

from pgwarden.errors import PgwardenError
from pgwarden.model import Lsn
from pgwarden.postgres.conf import Endpoint, InstanceSpec, slot_name

Connection = psycopg.Connection[TupleRow]


class PgError(PgwardenError):
    """Controlling or querying PostgreSQL failed; one sentence, ending with its output."""


class SqlError(PgError):
    """A member could not be reached or a statement failed; the message names the member."""


@dataclass(frozen=True)
class Observation:
    """What the local instance says about itself in one probe.

    `timeline`: on a primary, the timeline of its current WAL insert position. On a
    replica, the timeline of the last WAL received and flushed (`received_tli`) while a
    WAL receiver runs; otherwise the timeline of its last checkpoint or restartpoint,
    which lags a timeline switch until the next restartpoint.
    """

    in_recovery: bool
    timeline: int
    current_lsn: Lsn | None  # primary: pg_current_wal_lsn()
    received_lsn: Lsn | None  # replica: pg_last_wal_receive_lsn()
    replayed_lsn: Lsn | None  # replica: pg_last_wal_replay_lsn()
    replay_timestamp: float | None  # replica: commit time of the last replayed transaction
    streaming_from: str | None  # replica: "host:port" of its sender while streaming

    @property
    def wal_position(self) -> Lsn | None:
        """The furthest WAL this instance holds: current on a primary, else the furthest
        of received and replayed."""
        if not self.in_recovery:
            return self.current_lsn
        values = [v for v in (self.received_lsn, self.replayed_lsn) if v is not None]
        return max(values) if values else None


@dataclass(frozen=True)
class ReplicaStat:
    """One row of pg_stat_replication on a primary."""

    name: str  # application_name: the member name
    state: str
    sync_state: str
    flush_lsn: Lsn | None
    replay_lsn: Lsn | None


def _lsn(value: Any) -> Lsn | None:
    return None if value is None else Lsn.parse(str(value))


def connect(spec: InstanceSpec, *, timeout: float = 2.0) -> Connection:
    """A superuser connection (autocommit) to the local instance over TCP."""
    return connect_to(spec.endpoint, spec, timeout=timeout)


def connect_to(target: Endpoint, spec: InstanceSpec, *, timeout: float = 2.0) -> Connection:
    """A superuser connection (autocommit) to `target` with the cluster's credentials."""
    try:
        return psycopg.connect(
            host=target.host,
            port=target.port,
            user=spec.superuser,
            password=spec.superuser_password,
            dbname="postgres",
            application_name="pgwarden",
            # libpq and psycopg never wait less than 2 s for a connection.
            connect_timeout=max(2, round(timeout)),
            autocommit=True,
        )
    except psycopg.Error as exc:
        # psycopg's failed attempt sits in a reference cycle through this traceback and
        # keeps its socket open until the garbage collector runs; a server that accepts
        # it later (after a freeze) then waits up to authentication_timeout for a startup
        # packet, which also holds up its shutdown. Breaking the cycle closes it now.
        exc.__traceback__ = None
        raise SqlError(f"cannot connect to {_where(target)}: {_reason(exc)}") from None


@contextlib.contextmanager
def deadline(conn: Connection, seconds: float, what: str) -> Iterator[None]:
    """Break `conn` if the block takes longer than `seconds`; raise SqlError naming `what`."""
    lock = threading.Lock()
    done = False
    expired = threading.Event()
    fd = conn.pgconn.socket

    def expire() -> None:
        with lock:
            if done:
                return  # the connection may be closed and its descriptor reused
            expired.set()
            with contextlib.suppress(OSError):
                sock = socket.socket(fileno=os.dup(fd))
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                finally:
                    sock.close()

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except psycopg.Error as exc:
        if expired.is_set():
            raise SqlError(f"{what} did not answer within {seconds:g} s") from None
        raise SqlError(f"{what} failed: {_reason(exc)}") from None
    finally:
        with lock:
            done = True
        timer.cancel()


class Session:
    """One connection kept for the statements of one caller until it closes the session
    (the HA loop: for one tick, its probes and its actions).

    A tick asks the local instance three to five things; a connection for each (TCP,
    SCRAM's 4096 HMAC rounds on both sides, a backend forked) cost an idle agent about
    2.6% of a core. A kept connection that PostgreSQL closed (it restarted, or ended the
    backend) is noticed before use and replaced; one a statement failed on because the
    connection broke (or its deadline cut it) is dropped. Statements are serialised."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._key: tuple[object, ...] = ()

    @contextlib.contextmanager
    def connection(
        self, target: Endpoint, spec: InstanceSpec, timeout: float, what: str
    ) -> Iterator[Connection]:
        """The kept connection to `target` (made now if there is none usable), under a
        deadline of `timeout` seconds for the block."""
        with self._lock:
            conn = self._usable(target, spec, timeout)
            try:
                with deadline(conn, timeout, what):
                    yield conn
            finally:
                if conn.broken or conn.closed:
                    self._drop()

    def _usable(self, target: Endpoint, spec: InstanceSpec, timeout: float) -> Connection:
        key = (target.host, target.port, spec.superuser, spec.superuser_password)
        conn = self._conn
        if conn is not None and (key != self._key or _ended(conn)):
            self._drop()
            conn = None
        if conn is None:
            conn = connect_to(target, spec, timeout=timeout)
            self._conn, self._key = conn, key
        return conn

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


def _ended(conn: Connection) -> bool:
    """Whether a kept connection can no longer be used: closed, broken, or with something
    to read between statements (a server that ends a session says why and closes it; a
    connection dropped for a harmless message costs one reconnect)."""
    if conn.closed or conn.broken:
        return True
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))


@contextlib.contextmanager
def _connection(
    target: Endpoint, spec: InstanceSpec, timeout: float, what: str, session: Session | None
) -> Iterator[Connection]:
    """A connection to `target` under a deadline: the session's, or one of its own."""
    if session is not None:
        with session.connection(target, spec, timeout, what) as conn:
            yield conn
        return
    with connect_to(target, spec, timeout=timeout) as conn, deadline(conn, timeout, what):
        yield conn


def _where(target: Endpoint) -> str:
    return f"{target.name} at {target.host}:{target.port}"


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _run(
    target: Endpoint,
    spec: InstanceSpec,
    timeout: float,
    doing: str,
    query: str,
    session: Session | None = None,
) -> list[tuple[Any, ...]]:
    """Run one statement on `target` within `timeout` seconds; its rows (empty if none)."""
    what = f"{doing} on {_where(target)}"
    with _connection(target, spec, timeout, what, session) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else []


_OBSERVE = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_walfile_name(pg_current_wal_lsn()) END,
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       extract(epoch FROM pg_last_xact_replay_timestamp())::float8,
       (SELECT timeline_id FROM pg_control_checkpoint()),
       r.received_tli, r.status, r.sender_host, r.sender_port
FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS r ON true
"""


def observe(
    spec: InstanceSpec, timeout: float = 2.0, session: Session | None = None
) -> Observation | None:
    """Probe the local instance; None when it does not answer within `timeout`."""
    try:
        rows = _run(spec.endpoint, spec, timeout, "probing", _OBSERVE, session)
    except SqlError:
        return None
    (
        in_recovery,
        current,
        walfile,
        received,
        replayed,
        replay_ts,
        checkpoint_tli,
        received_tli,
        status,
        sender_host,
        sender_port,
    ) = rows[0]
    if walfile is not None:
        timeline = int(walfile[:8], 16)
    elif received_tli:
        timeline = int(received_tli)
    else:
        timeline = int(checkpoint_tli)
    streaming = status == "streaming" and sender_host is not None
    return Observation(
        in_recovery=bool(in_recovery),
        timeline=timeline,
        current_lsn=_lsn(current),
        received_lsn=_lsn(received),
        replayed_lsn=_lsn(replayed),
        replay_timestamp=float(replay_ts) if replay_ts is not None else None,
        streaming_from=f"{sender_host}:{sender_port}" if streaming else None,
    )


def replicas(
    spec: InstanceSpec, timeout: float = 2.0, session: Session | None = None
) -> list[ReplicaStat]:
    """The standbys connected to the local primary (pg_stat_replication)."""
    rows = _run(
        spec.endpoint,
        spec,
        timeout,
        "reading pg_stat_replication",
        "SELECT application_name, state, sync_state, flush_lsn::text, replay_lsn::text "
        "FROM pg_stat_replication ORDER BY application_name",
        session,
    )
    return [
        ReplicaStat(str(name), str(state), str(sync), _lsn(flush), _lsn(replay))
        for name, state, sync, flush, replay in rows
    ]


def ensure_slots(
    spec: InstanceSpec,
    members: Collection[str],
    timeout: float = 5.0,
    session: Session | None = None,
) -> None:
    """On the primary: a physical slot for each member but itself; drop stale ones.

    Dropped: inactive, permanent physical slots whose name is no member's slot. Logical
    slots and temporary slots (pg_basebackup's) are never touched.
    """
    wanted = {slot_name(m) for m in members} - {slot_name(spec.name)}
    rows = _run(
        spec.endpoint,
        spec,
        timeout,
        "reading replication slots",
        "SELECT slot_name, active FROM pg_replication_slots "
        "WHERE slot_type = 'physical' AND NOT temporary",
        session,
    )
    existing = {str(name): bool(active) for name, active in rows}
    if not (wanted - existing.keys()) and all(existing[n] for n in existing.keys() - wanted):
        return  # nothing to create, nothing to drop: the usual case, every tick
    what = f"managing replication slots on {_where(spec.endpoint)}"
    with _connection(spec.endpoint, spec, timeout, what, session) as conn:
        for name in sorted(wanted - existing.keys()):
            with contextlib.suppress(errors.DuplicateObject):
                conn.execute(
                    "SELECT pg_create_physical_replication_slot(%s, immediately_reserve => true)",
                    (name,),
                )
        for name in sorted(existing.keys() - wanted):
            if not existing[name]:
                # A standby may have connected since the query: then the slot is in use.
                with contextlib.suppress(errors.ObjectInUse, errors.UndefinedObject):
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))


def slots(spec: InstanceSpec, timeout: float = 2.0) -> dict[str, bool]:
    """Physical replication slots on the local instance: name -> active."""
    rows = _run(
        spec.endpoint,
        spec,
        timeout,
        "reading replication slots",
        "SELECT slot_name, active FROM pg_replication_slots WHERE slot_type = 'physical'",
    )
    return {str(name): bool(active) for name, active in rows}


def checkpoint(target: Endpoint, spec: InstanceSpec, timeout: float = 60.0) -> None:
    """CHECKPOINT on `target`: records a new timeline in pg_control before a peer rewinds."""
    _run(target, spec, timeout, "CHECKPOINT", "CHECKPOINT")


def reload(spec: InstanceSpec, timeout: float = 2.0) -> None:
    """Make the local instance reread its configuration files (pg_reload_conf)."""
    _run(spec.endpoint, spec, timeout, "reloading the configuration", "SELECT pg_reload_conf()")


def promote(spec: InstanceSpec, timeout: float = 10.0) -> None:
    """Promote the local replica and wait until it leaves recovery; no-op on a primary."""
    wait_seconds = max(1, round(timeout))
    what = f"promoting {_where(spec.endpoint)}"
    with connect(spec, timeout=min(timeout, 5.0)) as conn, deadline(conn, wait_seconds + 5, what):
        if not _in_recovery(conn):
            return
        conn.execute("SELECT pg_promote(wait => true, wait_seconds => %s)", (wait_seconds,))
        still = _in_recovery(conn)
    if still:
        raise SqlError(f"{spec.name} is still in recovery {wait_seconds} s after pg_promote")


def _in_recovery(conn: Connection) -> bool:
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])
