"""Seconds from a fault on the primary to the first commit acknowledged by any member.

One 3-member lab (synchronous mode on, default lease settings, nothing tuned per
scenario) and a writer committing on every member every 10 ms throughout. Each run waits
for the cluster to converge, lets the writer run for a second, injects the fault on the
current primary, measures, recovers, and waits for convergence again:

- host_loss: SIGKILL of the agent, fence, postmaster and backends at once; the agent is
  then started again and the old primary rejoins.
- host_freeze: SIGSTOP of all of them (a host that stops answering); they stay frozen
  until a new primary takes commits (at most 30 s), then get SIGCONT and rejoin.
- postgres_crash: SIGKILL of the postmaster only; the agent restarts it in place.

At the end the writer stops and every acknowledged commit is checked against the final
primary. Prints JSON on stdout (and to --json FILE); logs go to stderr.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    CONVERGE_S,
    HOST_FREEZE,
    HOST_LOSS,
    POSTGRES_CRASH,
    Bench,
    conclude,
    first_committer,
    last_commit_by,
    log,
    max_gap,
    recording,
)

TARGET_MEDIAN_S = {HOST_LOSS: 5.0, HOST_FREEZE: 5.0, POSTGRES_CRASH: 1.5}


def run(args: argparse.Namespace, bench: Bench, result: dict[str, Any]) -> None:
    runs: list[float | None] = result["runs"]
    deadline_s = bench.settings["ttl"] - bench.settings["safety_margin"]
    for number in range(1, args.runs + 1):
        try:
            old = bench.wait_settled()
        except AssertionError as exc:
            result["errors"].append(f"before run {number}: {exc}")
            log("not converged; repairing", error=exc)
            old = bench.repair()
        time.sleep(1.0)
        log("fault", run=number, kind=args.fault, target=old)
        outcome = bench.inject(args.fault, old, was_primary=True)
        seconds = None if outcome.first_commit_s is None else round(outcome.first_commit_s, 3)
        runs.append(seconds)
        if seconds is None:
            result["errors"].append(f"run {number}: no commit within {CONVERGE_S:g} s")
        try:
            new = bench.wait_settled()
        except AssertionError as exc:
            result["errors"].append(f"run {number}: recovery did not converge: {exc}")
            log("recovery did not converge; repairing", run=number, error=exc)
            new = bench.repair()
        assert bench.writer is not None
        detail: dict[str, Any] = {
            "run": number,
            "old_primary": old,
            "new_primary": new,
            "first_commit_by": first_committer(bench.writer, outcome.at),
            "seconds": seconds,
        }
        if new != old:
            # The old primary must stop taking writes by its lease deadline.
            last = last_commit_by(bench.writer, old, outcome.at)
            detail["old_primary_last_commit_s"] = None if last is None else round(last, 3)
            if last is not None and last > deadline_s:
                result["commits_past_deadline"] += 1
        result["details"].append(detail)
        log("run done", run=number, seconds=seconds, old=old, new=new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fault", required=True, choices=sorted(TARGET_MEDIAN_S))
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    parser.add_argument("--keep-lab", action="store_true", help="keep the lab's files")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    started = time.monotonic()
    bench = Bench(f"bench-{args.fault}")
    bench.keep_files = args.keep_lab
    result: dict[str, Any] = {
        "scenario": args.fault,
        "runs": [],
        "median_s": None,
        "max_s": None,
        "lost_writes": None,
        "split_brain": None,
        "commits_past_deadline": 0,
        "acknowledged": None,
        "settings": bench.settings,
        "errors": [],
        "details": [],
    }
    with recording(result) as outcome, bench.running():
        run(args, bench, result)
        assert bench.writer is not None
        report = bench.finish()
        result["lost_writes"] = len(report.lost_writes)
        result["split_brain"] = len(report.split_brain)
        result["acknowledged"] = report.acknowledged
        result["by_member"] = report.by_member
        result["max_unavailable_s"] = round(max_gap(bench.writer), 3)
        if report.lost_writes:
            result["lost_ids_sample"] = report.lost_writes[:20]
        if report.split_brain:
            result["split_brain_pairs"] = report.split_brain
        measured = [s for s in result["runs"] if s is not None]
        if measured:
            result["median_s"] = round(statistics.median(measured), 3)
            result["max_s"] = max(measured)
        missed = result["median_s"] is None or (result["median_s"] > TARGET_MEDIAN_S[args.fault])
        past = result["commits_past_deadline"]
        if result["errors"] or report.lost_writes or report.split_brain or missed or past:
            bench.keep_files = True
    if outcome.interrupted:
        return 130
    return conclude(result, bench, started, args.json, ("errors", "lost_writes", "split_brain"))


if __name__ == "__main__":
    sys.exit(main())
