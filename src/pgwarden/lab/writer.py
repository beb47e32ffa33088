"""A writer that records every acknowledged commit, and the checker that judges them.

One thread per member tries to commit a numbered row every `interval` seconds on that
member, so the writer probes every member at once: a commit acknowledged by a member is
proof that it accepted writes at that moment. Afterwards the checker reports:

- `lost_writes`: acknowledged ids missing from the final primary;
- `split_brain`: pairs of members whose spans of acknowledged commits overlap in time
  (two members accepting writes at once);
- `first_commit_after(t)`: seconds from `t` to the first acknowledged commit after it.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg

TABLE = "pgwarden_writes"
INSERT = "INSERT INTO pgwarden_writes (id, member) VALUES (%s, %s)"
SELECT_IDS = "SELECT id FROM pgwarden_writes"


@dataclass(frozen=True)
class Ack:
    id: int
    member: str
    sent: float  # monotonic, before the statement was sent
    acked: float  # monotonic, when the commit returned


@dataclass
class Report:
    acknowledged: int
    lost_writes: list[int]
    split_brain: list[tuple[str, str]]
    by_member: dict[str, int] = field(default_factory=dict)


class Writer:
    """Commit rows on every member; `conninfo(name)` gives each member's DSN."""

    def __init__(
        self, members: Iterable[str], conninfo: Callable[[str], str], interval: float = 0.01
    ) -> None:
        self.members = list(members)
        self._conninfo = conninfo
        self.interval = interval
        self.acks: list[Ack] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(m,), name=f"writer-{m}", daemon=True)
            for m in self.members
        ]

    @staticmethod
    def prepare(conninfo: str) -> None:
        """Create the table on the primary (idempotent)."""
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS pgwarden_writes "
                "(id bigint PRIMARY KEY, member text NOT NULL, at timestamptz DEFAULT now())"
            )

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def _run(self, member: str) -> None:
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(
                        self._conninfo(member), autocommit=True, connect_timeout=1
                    )
                row_id = next(self._ids)
                conn.execute(INSERT, (row_id, member))
                ack = Ack(row_id, member, started, time.monotonic())
                with self._lock:
                    self.acks.append(ack)
            except psycopg.errors.ReadOnlySqlTransaction:
                # A replica: probe it less often, it cannot take writes until promoted.
                self._stop.wait(0.05)
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(0.05)
            remaining = self.interval - (time.monotonic() - started)
            if remaining > 0:
                self._stop.wait(remaining)
        if conn is not None:
            conn.close()

    # ----------------------------------------------------------------- judging
    def snapshot(self) -> list[Ack]:
        with self._lock:
            return list(self.acks)

    def first_commit_after(self, moment: float) -> float | None:
        """Seconds from `moment` to the first commit sent and acknowledged after it."""
        later = [a.acked for a in self.snapshot() if a.sent >= moment]
        return min(later) - moment if later else None

    def wait_for_commit_after(self, moment: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.first_commit_after(moment)
            if found is not None:
                return found
            time.sleep(0.02)
        return None

    def split_brain(self, gap: float = 1.0) -> list[tuple[str, str]]:
        """Pairs of members that accepted new writes at the same time.

        A member's acknowledgements are grouped into periods, split where it acknowledged
        nothing for `gap` seconds. When two members' periods overlap, the one whose first
        commit was sent later took over; the earlier one is in split brain only if it acknowledged a
        commit *sent* after the later one's first acknowledged commit was sent. A commit
        already in flight when a host froze, acknowledged on thaw, was accepted before the
        takeover: whether it survived is what `lost_writes` judges.
        """
        periods: list[tuple[float, float, str, list[Ack]]] = []
        by_member: dict[str, list[Ack]] = {}
        for ack in self.snapshot():
            by_member.setdefault(ack.member, []).append(ack)
        for member, acks in by_member.items():
            acks.sort(key=lambda a: a.acked)
            current = [acks[0]]
            for ack in acks[1:]:
                if ack.acked - current[-1].acked > gap:
                    periods.append((current[0].acked, current[-1].acked, member, current))
                    current = []
                current.append(ack)
            periods.append((current[0].acked, current[-1].acked, member, current))
        pairs: set[tuple[str, str]] = set()
        for i, (a_start, a_end, a, a_acks) in enumerate(periods):
            for b_start, b_end, b, b_acks in periods[i + 1 :]:
                if a == b or not (a_start <= b_end and b_start <= a_end):
                    continue
                # The period whose first commit was sent first is the earlier primary's.
                a_first, b_first = min(x.sent for x in a_acks), min(x.sent for x in b_acks)
                earlier, later = (a_acks, b_acks) if a_first <= b_first else (b_acks, a_acks)
                takeover = min(x.sent for x in later)
                if any(x.sent > takeover for x in earlier):
                    pairs.add((min(a, b), max(a, b)))
        return sorted(pairs)

    def check(self, primary_conninfo: str) -> Report:
        """Compare the acknowledged ids with what the (final) primary holds."""
        with psycopg.connect(primary_conninfo, connect_timeout=3) as conn:
            present = {row[0] for row in conn.execute(SELECT_IDS)}
        acks = self.snapshot()
        by_member: dict[str, int] = {}
        for ack in acks:
            by_member[ack.member] = by_member.get(ack.member, 0) + 1
        lost = sorted(a.id for a in acks if a.id not in present)
        return Report(len(acks), lost, self.split_brain(), by_member)
