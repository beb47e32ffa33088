"""Random faults for M minutes under a writer: nothing acknowledged is lost, never two
writable primaries, and no failover without a fault on the primary.

One 3-member lab (synchronous mode on, default settings) and a writer committing on every
member every 10 ms throughout. Every 15-30 s a random fault hits the current primary
(three times in four) or a replica: host_loss, host_freeze, postgres_crash, agent_kill,
agent_freeze (SIGSTOP of the agent for 2 x ttl) or zk_cut (the member cut off from
ZooKeeper for 8 s). Each is recovered as in benchmarks/failover.py, and the cluster must
converge again within 60 s; if it does not, the fault is recorded in `errors`, the lab is
repaired (thaw, heal, restart dead agents) and the run goes on.

For a failover, `old_primary_last_commit_s` is the time from the fault to the last commit
the old primary acknowledged; `commits_past_deadline` counts failovers where that exceeds
ttl - safety_margin, the latest moment the fence allows.

Per fault, `unavailable_s` is the longest time without any acknowledged commit from the
fault until the cluster settled again, and `first_commit_s` the time from the fault to the
first commit (an agent fault on the primary leaves its PostgreSQL taking writes until the
fence stops it, so that one can be near 0).

A change of primary is a move of the acknowledged commits from one member to another (the
writer probes every member). It counts as a false failover unless it moves away from a
primary that the latest fault hit.

Prints JSON on stdout (and to --json FILE); logs go to stderr.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    FAULTS,
    Bench,
    Outcome,
    conclude,
    first_committer,
    last_commit_by,
    log,
    longest_gap,
    max_gap,
    recording,
)

from pgwarden.lab.writer import Writer

PRIMARY_SHARE = 0.75


@dataclass(frozen=True)
class Change:
    at: float  # when the new member acknowledged its first commit
    old: str
    new: str


def primary_changes(writer: Writer) -> list[Change]:
    """Every move of the writes from one member to another, in acknowledgement order.

    The writer probes every member, so the member acknowledging commits is the one
    that takes writes: the ground truth, unlike health endpoints answered from the
    state of an agent's last HA tick.
    """
    changes = []
    current: str | None = None
    for ack in sorted(writer.snapshot(), key=lambda a: a.acked):
        if current is not None and ack.member != current:
            changes.append(Change(ack.acked, current, ack.member))
        current = ack.member
    return changes


def false_failovers(
    changes: list[Change], outcomes: list[Outcome], t0: float
) -> list[dict[str, Any]]:
    """Changes of primary not explained by a fault on the primary that was replaced."""
    found = []
    for change in changes:
        cause = next((o for o in reversed(outcomes) if o.at <= change.at), None)
        if cause is not None and cause.was_primary and cause.target == change.old:
            continue
        found.append(
            {
                "at_s": round(change.at - t0, 3),
                "old": change.old,
                "new": change.new,
                "after_fault": None if cause is None else outcomes.index(cause),
            }
        )
    return found


def chaos(
    args: argparse.Namespace, bench: Bench, result: dict[str, Any], outcomes: list[Outcome]
) -> None:
    """Inject faults until the time is up; `at_s` in the JSON counts from `t0`."""
    rng = random.Random(args.seed)
    cluster = bench.cluster
    deadline_s = bench.settings["ttl"] - bench.settings["safety_margin"]
    t0 = bench.t0
    end = t0 + args.minutes * 60
    primary = bench.wait_settled()
    next_at = t0 + rng.uniform(5, 10)
    consecutive_errors = 0
    while next_at < end:
        time.sleep(max(0.0, next_at - time.monotonic()))
        index = len(outcomes)
        try:
            primary = bench.wait_settled()  # a false failover may have moved it since
        except AssertionError as exc:
            result["errors"].append(f"before fault {index}: {exc}")
            log("not settled before a fault; repairing", error=exc)
            try:
                primary = bench.repair()
            except Exception as again:  # noqa: BLE001
                result["errors"].append(f"repair before fault {index} failed: {again}")
                return
        kind = rng.choice(FAULTS)
        on_primary = rng.random() < PRIMARY_SHARE
        target = (
            primary
            if on_primary
            else rng.choice(sorted(n for n in cluster.names() if n != primary))
        )
        log("fault", n=index, kind=kind, target=target, was_primary=on_primary)
        entry: dict[str, Any] = {
            "kind": kind,
            "target": target,
            "was_primary": on_primary,
            "failover": False,
            "unavailable_s": None,
        }
        result["faults"].append(entry)
        try:
            assert bench.writer is not None
            outcome = bench.inject(kind, target, on_primary)
            outcomes.append(outcome)
            entry["at_s"] = round(outcome.at - t0, 3)
            if outcome.first_commit_s is not None:
                entry["first_commit_s"] = round(outcome.first_commit_s, 3)
                entry["first_commit_by"] = first_committer(bench.writer, outcome.at)
            new = bench.wait_settled()
            gap = longest_gap(bench.writer, outcome.at, time.monotonic())
            entry["unavailable_s"] = round(gap, 3)
            consecutive_errors = 0
        except Exception as exc:  # noqa: BLE001 - recorded; the run goes on if it can
            message = f"fault {index} ({kind} on {target}): {type(exc).__name__}: {exc}"
            log("fault did not recover", error=message)
            result["errors"].append(message)
            entry["error"] = str(exc)
            consecutive_errors += 1
            if "at_s" not in entry:
                outcomes.append(Outcome(kind, target, on_primary, time.monotonic(), None))
            try:
                new = bench.repair()
            except Exception as again:  # noqa: BLE001
                result["errors"].append(f"repair after fault {index} failed: {again}")
                log("repair failed; stopping the chaos loop", error=again)
                return
            if consecutive_errors >= 3:
                result["errors"].append("three faults in a row did not recover; stopped")
                return
        entry["new_primary"] = new
        entry["failover"] = new != primary
        if entry["failover"] and on_primary and outcomes and bench.writer is not None:
            # The old primary must stop taking writes by its lease deadline, at most
            # ttl - safety_margin after the fault.
            last = last_commit_by(bench.writer, target, outcomes[-1].at)
            if last is not None:
                entry["old_primary_last_commit_s"] = round(last, 3)
                if last > deadline_s:
                    result["commits_past_deadline"] += 1
        log(
            "recovered",
            n=index,
            unavailable_s=entry["unavailable_s"],
            primary=new,
            failover=entry["failover"],
        )
        primary = new
        next_at = max(outcomes[-1].at + rng.uniform(15, 30), time.monotonic() + 3)
    # No fault fits before the end: the writer goes on, a failover now would be false.
    time.sleep(max(0.0, end - time.monotonic()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--seed", type=int, help="random seed (default: a random one)")
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    parser.add_argument("--keep-lab", action="store_true", help="keep the lab's files")
    args = parser.parse_args()
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**31)

    started = time.monotonic()
    bench = Bench("chaos")
    bench.keep_files = args.keep_lab
    result: dict[str, Any] = {
        "minutes": args.minutes,
        "seed": args.seed,
        "faults": [],
        "lost_writes": None,
        "split_brain": None,
        "false_failovers": None,
        "max_unavailable_s": None,
        "commits_past_deadline": 0,
        "acknowledged": None,
        "settings": bench.settings,
        "errors": [],
    }
    with recording(result) as outcome, bench.running():
        outcomes: list[Outcome] = []
        try:
            chaos(args, bench, result, outcomes)
            report = bench.finish()
        finally:
            assert bench.writer is not None
            changes = primary_changes(bench.writer)
            events = false_failovers(changes, outcomes, bench.t0)
            result["false_failover_events"] = events
            result["false_failovers"] = len(events)
        result["lost_writes"] = len(report.lost_writes)
        result["split_brain"] = len(report.split_brain)
        result["acknowledged"] = report.acknowledged
        result["by_member"] = report.by_member
        result["max_unavailable_s"] = round(max_gap(bench.writer), 3)
        if report.lost_writes:
            result["lost_ids_sample"] = report.lost_writes[:20]
        if report.split_brain:
            result["split_brain_pairs"] = report.split_brain
        if (
            result["errors"]
            or report.lost_writes
            or report.split_brain
            or result["false_failovers"]
            or result["commits_past_deadline"]
        ):
            bench.keep_files = True
    if outcome.interrupted:
        return 130
    return conclude(
        result,
        bench,
        started,
        args.json,
        ("errors", "lost_writes", "split_brain", "false_failovers"),
    )


if __name__ == "__main__":
    sys.exit(main())
