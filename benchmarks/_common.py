"""Shared parts of the HA benchmarks: the lab, the writer, faults and their recovery.

`Bench` owns one 3-member lab (synchronous mode on, default settings) and a writer that
commits on every member every 10 ms. It remembers every process it froze and every
network cut it made, so that teardown (also on Ctrl-C, SIGTERM or an error) thaws and
heals them before the lab goes down. Logs go to stderr; stdout carries only the JSON.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from pgwarden.config import DcsSettings
from pgwarden.lab import Lab, LabSpec, agents, faults, scratch_directory
from pgwarden.lab.ha import HaCluster
from pgwarden.lab.net import ZOOKEEPER_ADDRESSES
from pgwarden.lab.procs import descendants, is_running, start_ticks
from pgwarden.lab.writer import Report, Writer

# Faults that take the whole "host" (agent, fence, postmaster, backends) or part of it.
HOST_LOSS = "host_loss"
HOST_FREEZE = "host_freeze"
POSTGRES_CRASH = "postgres_crash"
AGENT_KILL = "agent_kill"
AGENT_FREEZE = "agent_freeze"
ZK_CUT = "zk_cut"
FAULTS = (HOST_LOSS, HOST_FREEZE, POSTGRES_CRASH, AGENT_KILL, AGENT_FREEZE, ZK_CUT)

FREEZE_LIMIT_S = 30.0  # a frozen primary stays frozen until writes resume, at most this
ZK_CUT_S = 8.0
CONVERGE_S = 60.0


def log(message: str, **fields: Any) -> None:
    """One line on stderr: wall-clock time, message, key=value pairs."""
    stamp = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
    extra = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"[{stamp}] {message}{' ' + extra if extra else ''}", file=sys.stderr, flush=True)


def default_settings() -> dict[str, float]:
    """The lease timing every agent runs with: the defaults, nothing tuned."""
    return {
        name: float(DcsSettings.model_fields[name].default)
        for name in ("ttl", "loop_wait", "safety_margin")
    }


def emit(result: dict[str, Any], path: Path | None) -> None:
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if path is not None:
        path.write_text(text + "\n")


class Recording:
    """Outcome of `recording`: whether the run was interrupted (exit code 130)."""

    interrupted = False


@contextlib.contextmanager
def recording(result: dict[str, Any]) -> Iterator[Recording]:
    """Run a benchmark body: an error goes into result["errors"] (the lab is kept by the
    body's own bookkeeping), Ctrl-C or a signal marks the run interrupted."""
    outcome = Recording()
    try:
        yield outcome
    except (KeyboardInterrupt, Interrupted) as exc:
        log("interrupted; lab torn down", reason=exc or "Ctrl-C")
        outcome.interrupted = True
    except Exception as exc:  # noqa: BLE001 - reported in the JSON; the lab is kept
        result["errors"].append(f"{type(exc).__name__}: {exc}")
        log("benchmark failed", error=exc)


def conclude(
    result: dict[str, Any], bench: Bench, started: float, path: Path | None, failing: Sequence[str]
) -> int:
    """Finish the JSON, print and save it; exit 1 if any `failing` key is set, else 0."""
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["lab_directory"] = bench.directory if bench.keep_files else None
    emit(result, path)
    return 1 if any(result.get(key) for key in failing) else 0


def max_gap(writer: Writer) -> float:
    """The longest time between two consecutive acknowledged commits (any member)."""
    times = sorted(a.acked for a in writer.snapshot())
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: unwind like Ctrl-C so that teardown runs."""


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(f"received {signal.Signals(signum).name}")


@dataclass
class Outcome:
    """What one injected fault did, as seen by the writer and the cluster."""

    kind: str
    target: str
    was_primary: bool
    at: float  # monotonic time of the fault
    first_commit_s: float | None  # fault -> first commit acknowledged by any member


class Bench:
    """A lab with agents, a running writer, and the bookkeeping to always clean up."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.settings = default_settings()
        self.lab: Lab | None = None
        self.cluster: HaCluster
        self.writer: Writer | None = None
        self.frozen: dict[int, int | None] = {}  # pid -> start ticks when frozen
        self.cuts: list[faults.Cut] = []
        self.keep_files = False
        self.t0 = time.monotonic()  # reset when the writer starts

    # ----------------------------------------------------------------- lifecycle
    @contextlib.contextmanager
    def running(self) -> Iterator[Bench]:
        """Start the lab and the writer; always thaw, heal and tear down on the way out."""
        previous = {
            sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)
        }
        try:
            self._start()
            yield self
        except Exception:
            self.keep_files = True  # an error: keep the logs for a post-mortem
            raise
        finally:
            # A second Ctrl-C must not leave a frozen or half-stopped lab behind.
            ignored = {
                sig: signal.signal(sig, signal.SIG_IGN)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
            }
            try:
                self.teardown()
            finally:
                for sig, handler in {**ignored, **previous}.items():
                    signal.signal(sig, handler)

    def _start(self) -> None:
        started = time.monotonic()
        spec = LabSpec(
            zookeeper_nodes=1, s3=False, postgres_nodes=3, agents=True, synchronous_mode="on"
        )
        self.lab = Lab.create(scratch_directory(self.tag), spec)
        self.cluster = HaCluster(self.lab)
        primary = self.cluster.wait_converged(CONVERGE_S)
        log(
            "lab up",
            directory=self.lab.directory,
            primary=primary,
            seconds=round(time.monotonic() - started, 1),
        )
        Writer.prepare(self.cluster.conninfo(primary))
        self.writer = Writer(self.cluster.names(), self.cluster.conninfo, interval=0.01)
        self.writer.start()
        self.t0 = time.monotonic()

    def teardown(self) -> None:
        self.thaw_all()
        self.heal_all()
        if self.writer is not None:
            self.writer.stop()
        if self.lab is None:
            return
        keep = self.keep_files
        try:
            self.lab.down(remove_files=not keep)
        except Exception as exc:  # noqa: BLE001 - report and keep the logs
            log("lab down failed; files kept", error=exc, directory=self.lab.directory)
            return
        if keep:
            log("lab stopped; logs kept", directory=self.lab.directory)
        else:
            log("lab removed")

    @property
    def directory(self) -> str | None:
        return str(self.lab.directory) if self.lab is not None else None

    # ----------------------------------------------------------------- bookkeeping
    def freeze(self, pids: list[int]) -> None:
        for pid in pids:
            self.frozen.setdefault(pid, start_ticks(pid))

    def thaw(self, pids: list[int]) -> None:
        for pid in pids:
            ticks = self.frozen.pop(pid, None)
            # Never signal a PID that now belongs to another process.
            if ticks is not None and start_ticks(pid) == ticks:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def thaw_all(self) -> None:
        if self.frozen:
            log("thawing", pids=sorted(self.frozen))
            self.thaw(list(self.frozen))

    def heal_all(self) -> None:
        while self.cuts:
            cut = self.cuts.pop()
            with contextlib.suppress(Exception):
                faults.heal(cut)

    def agent_running(self, name: str) -> bool:
        assert self.lab is not None
        record = self.lab.registry.get(agents.process_name(name))
        return record is not None and is_running(record)

    def repair(self) -> str:
        """Undo whatever a failed fault left behind, restart dead agents, and converge."""
        self.thaw_all()
        self.heal_all()
        for name in self.cluster.names():
            if not self.agent_running(name):
                log("restarting a dead agent", member=name)
                self.cluster.restart_agent(name)
        return self.wait_settled()

    def wait_settled(self, timeout: float = CONVERGE_S) -> str:
        """Wait until the cluster converged around a primary that really takes writes.

        The agents' health endpoints answer from the state seen at their last HA tick, so
        right after a freeze or a promotion they can show a cluster "converged" around a
        member that no longer leads. The writer's acknowledgements are the ground truth:
        the primary must acknowledge a commit sent after it was seen converged, and the
        cluster must still look converged around it afterwards.
        """
        assert self.writer is not None
        deadline = time.monotonic() + timeout
        last_error = "no attempt"
        while time.monotonic() < deadline:
            try:
                primary = self.cluster.wait_converged(max(0.5, deadline - time.monotonic()))
            except AssertionError as exc:
                last_error = str(exc)
                break
            mark = time.monotonic()
            if _acked_by(self.writer, primary, mark, timeout=3.0):
                try:
                    if self.cluster.wait_converged(5.0) == primary:
                        return primary
                except AssertionError as exc:
                    last_error = str(exc)
            else:
                last_error = f"{primary} looked like the primary but took no commit"
            time.sleep(0.2)
        raise AssertionError(f"the cluster did not settle within {timeout:g} s: {last_error}")

    def finish(self) -> Report:
        """Stop the writer once the cluster settled, and judge every acknowledged write
        against the final primary (as `pgwarden.lab.ha.finish`, but settled)."""
        assert self.writer is not None
        primary = self.wait_settled()
        time.sleep(0.5)
        self.writer.stop()
        return self.writer.check(self.cluster.conninfo(primary))

    # ----------------------------------------------------------------- faults
    def host_pids(self, name: str) -> list[int]:
        """Every process of member `name`'s "host": the agent and its descendants (fence,
        postmaster, backends) and, when the agent adopted a postmaster left running by
        a previous agent (then no descendant of it), that postmaster and its children.
        `HaCluster.host_processes` misses the adopted case."""
        assert self.lab is not None
        agent = self.cluster.agent_pid(name)
        pids = [agent, *descendants(agent)]
        postmaster = self.lab.postmaster_pid(name)
        if postmaster is not None:
            pids += [postmaster, *descendants(postmaster)]
        return list(dict.fromkeys(pids))

    def signal_host(self, name: str, sig: int) -> list[int]:
        """Signal every process of the host, then once more any process it started while
        the first pass ran (a backend for a reconnecting client)."""
        done: list[int] = []
        for _ in range(2):
            for pid in self.host_pids(name):
                if pid in done:
                    continue
                if sig == signal.SIGSTOP:
                    self.freeze([pid])  # recorded first: teardown thaws it whatever happens
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                done.append(pid)
        return done

    def inject(self, kind: str, target: str, was_primary: bool) -> Outcome:
        """Inject `kind` on member `target`, measure, and recover; the caller then waits
        for the cluster to converge.

        A fault on the primary lasts until any member acknowledges a commit again (the
        measured time), bounded by FREEZE_LIMIT_S for freezes; a killed agent stays dead
        until another member takes writes (its PostgreSQL runs on until fenced); an agent
        freeze lasts 2 x ttl and a cut from ZooKeeper ZK_CUT_S. A fault on a replica lasts
        at least 2 x ttl, so that its loss is noticed by the others.
        """
        assert self.writer is not None and self.lab is not None
        cluster, writer = self.cluster, self.writer
        ttl = self.settings["ttl"]
        hold = 0.0 if was_primary else 2 * ttl
        first: float | None
        if kind == HOST_LOSS:
            self.signal_host(target, signal.SIGKILL)
            at = time.monotonic()
            first = writer.wait_for_commit_after(at, CONVERGE_S)
            _sleep_until(at + hold)
            cluster.restart_agent(target)
        elif kind == HOST_FREEZE:
            pids = self.signal_host(target, signal.SIGSTOP)
            at = time.monotonic()
            try:
                first = writer.wait_for_commit_after(at, FREEZE_LIMIT_S)
                _sleep_until(at + hold)
            finally:
                self.thaw(pids)
            if first is None:
                first = writer.wait_for_commit_after(at, CONVERGE_S - FREEZE_LIMIT_S)
        elif kind == POSTGRES_CRASH:
            cluster.kill_postgres(target)
            at = time.monotonic()
            first = writer.wait_for_commit_after(at, CONVERGE_S)
        elif kind == AGENT_KILL:
            cluster.kill_agent(target, signal.SIGKILL)
            at = time.monotonic()
            if was_primary:
                # Its PostgreSQL keeps taking writes until the fence stops it: stay dead
                # until another member takes writes, as a real crashed agent would.
                _commit_elsewhere(writer, target, at, FREEZE_LIMIT_S)
            first = writer.wait_for_commit_after(at, CONVERGE_S)
            _sleep_until(at + hold)
            cluster.restart_agent(target)
        elif kind == AGENT_FREEZE:
            pid = cluster.agent_pid(target)
            self.freeze([pid])
            os.kill(pid, signal.SIGSTOP)
            at = time.monotonic()
            try:
                _sleep_until(at + 2 * ttl)
            finally:
                self.thaw([pid])
            first = writer.wait_for_commit_after(at, CONVERGE_S)
        elif kind == ZK_CUT:
            cut = self.lab.cut(self.lab.member(target).host, ZOOKEEPER_ADDRESSES[0])
            self.cuts.append(cut)
            at = time.monotonic()
            try:
                _sleep_until(at + ZK_CUT_S)
            finally:
                self.cuts.remove(cut)
                self.lab.heal(cut)
            first = writer.wait_for_commit_after(at, CONVERGE_S)
        else:
            raise ValueError(f"unknown fault {kind!r}")
        return Outcome(kind, target, was_primary, at, first)


def _commit_elsewhere(writer: Writer, member: str, since: float, timeout: float) -> bool:
    """Wait until a member other than `member` acknowledges a commit sent after `since`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(a.member != member and a.sent >= since for a in writer.snapshot()[-200:]):
            return True
        time.sleep(0.02)
    return False


def first_committer(writer: Writer, since: float) -> str | None:
    """The member that acknowledged the first commit sent after `since`."""
    later = [a for a in writer.snapshot() if a.sent >= since]
    return min(later, key=lambda a: a.acked).member if later else None


def last_commit_by(writer: Writer, member: str, since: float) -> float | None:
    """Seconds from `since` to the acknowledgement of the last commit `member` accepted
    after it: sent at or after `since`. A commit already in flight when a host froze is
    acknowledged on thaw but was accepted before the fault; lost_writes judges those."""
    times = [a.acked for a in writer.snapshot() if a.member == member and a.sent >= since]
    return max(times) - since if times else None


def longest_gap(writer: Writer, start: float, end: float) -> float:
    """The longest time without any acknowledged commit that overlaps [start, end]: from
    the last commit before `start`, through the window, to `end`."""
    times = sorted(a.acked for a in writer.snapshot())
    before = [t for t in times if t < start]
    points = [before[-1] if before else start]
    points += [t for t in times if start <= t <= end]
    points.append(end)
    return max(b - a for a, b in itertools.pairwise(points))


def _acked_by(writer: Writer, member: str, since: float, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(a.member == member and a.sent >= since for a in writer.snapshot()[-200:]):
            return True
        time.sleep(0.02)
    return False


def _sleep_until(moment: float) -> None:
    remaining = moment - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
