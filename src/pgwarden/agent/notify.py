"""Events out: the typed cluster events this agent records, handed to outlets.

An outlet receives each event as one JSON-ready mapping (`kind`, `time`, `member`,
`cluster`, `data`). Outlets run on one background thread fed by a bounded queue, so the
HA loop only ever enqueues; an outlet that fails or hangs is logged, never fatal, and
its timeout bounds it. `events.notify_command` is the outlet built here; others (a
webhook) implement the same `Outlet` protocol.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from pgwarden.logs import get_logger

if TYPE_CHECKING:
    from pgwarden.config import Settings

log = get_logger("agent.notify")

QUEUE_SIZE = 1000


class Outlet(Protocol):
    name: str
    kinds: frozenset[str]

    def send(self, event: dict[str, Any]) -> None:
        """Deliver one event; raise OutletError (or OSError) when it could not."""


class OutletError(Exception):
    pass


class CommandOutlet:
    """Runs a program (no shell) with the event as JSON on stdin, within a timeout."""

    name = "notify_command"

    def __init__(self, argv: Sequence[str], kinds: Iterable[str], timeout: float) -> None:
        self.argv = list(argv)
        self.kinds = frozenset(kinds)
        self.timeout = timeout

    def send(self, event: dict[str, Any]) -> None:
        payload = json.dumps(event, default=str) + "\n"
        try:
            done = subprocess.run(
                self.argv, input=payload, capture_output=True, text=True,
                timeout=self.timeout, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise OutletError(
                f"{self.argv[0]} ran past {self.timeout:g} s and was killed"
            ) from None
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            raise OutletError(
                f"{self.argv[0]} exited with code {done.returncode}"
                + (f": {said[-1]}" if said else "")
            )


class Notifier:
    """Queues events for the outlets that want their kind; one delivery thread."""

    def __init__(
        self,
        cluster: str,
        member: str,
        outlets: Sequence[Outlet],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.cluster = cluster
        self.member = member
        self.outlets = list(outlets)
        self.clock = clock
        self.delivered = 0
        self.failed = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)

    def start(self) -> None:
        if self.outlets:
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within `timeout`; what is left is dropped."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Queue `kind` for the outlets that want it; never blocks, never raises."""
        if not any(kind in outlet.kinds for outlet in self.outlets):
            return
        event = {
            "kind": kind,
            "time": self.clock().isoformat(),
            "member": self.member,
            "cluster": self.cluster,
            "data": data,
        }
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.failed += 1
            log.error("notify.dropped", kind=kind, reason=f"{QUEUE_SIZE} events already wait")

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            for outlet in self.outlets:
                if event["kind"] in outlet.kinds:
                    self._deliver(outlet, event)

    def _deliver(self, outlet: Outlet, event: dict[str, Any]) -> None:
        try:
            outlet.send(event)
        except (OutletError, OSError) as exc:
            self.failed += 1
            log.error("notify.failed", outlet=outlet.name, kind=event["kind"], error=str(exc))
        except Exception as exc:  # an outlet must never take the thread down
            self.failed += 1
            log.exception("notify.failed", outlet=outlet.name, kind=event["kind"], error=str(exc))
        else:
            self.delivered += 1
            log.info("notify.sent", outlet=outlet.name, kind=event["kind"])


def notifier_for(settings: Settings) -> Notifier:
    """The notifier of `settings.events`: the command outlet when one is configured."""
    events = settings.events
    outlets: list[Outlet] = []
    if events.notify_command is not None:
        outlets.append(
            CommandOutlet(events.notify_command, events.notify_kinds, events.notify_timeout)
        )
    return Notifier(settings.cluster, settings.member, outlets)
