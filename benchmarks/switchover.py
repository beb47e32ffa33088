"""Write unavailability across a planned `pgwarden switchover`.

One 3-member lab (synchronous mode on, default lease settings) and a writer committing
on every member every 10 ms throughout. Each run waits for the cluster to converge, lets
the writer run for a second, then runs `pgwarden switchover` (no --to: the CLI picks the
best replica) as a subprocess, as an engineer would. The run's unavailability is the
longest gap between consecutive acknowledged commits (any member, by acknowledgement
time) over the window from the command's start to 5 s after it; then the cluster must
converge again.

At the end the writer stops and every acknowledged commit is checked against the final
primary. Also counted: rewinds and re-clones the agents logged after the writer started
(a clean switchover needs neither). Prints JSON on stdout (and to --json FILE); logs go
to stderr. Exit code 1 when a run failed, a write was lost or two members took writes
at once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import Bench, conclude, log, longest_gap, recording

WINDOW_S = 5.0  # the gap is measured from the command's start to this much after it
WARMUP_S = 1.0  # writes before each switchover
COMMAND_TIMEOUT_S = 60.0
TARGET_MEDIAN_S = 0.5


def _switchover(bench: Bench) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run `pgwarden switchover -o json`; the result and its wall time."""
    assert bench.lab is not None
    config = bench.lab.agent_config_path(bench.cluster.names()[0])
    argv = [sys.executable, "-m", "pgwarden", "switchover", "-o", "json", "-c", str(config)]
    started = time.monotonic()
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    return result, time.monotonic() - started


def _log_sizes(bench: Bench) -> dict[str, int]:
    assert bench.lab is not None
    sizes = {}
    for name in bench.cluster.names():
        path = bench.lab.directory / "agents" / f"{name}.log"
        sizes[name] = path.stat().st_size if path.exists() else 0
    return sizes


def _count_events(bench: Bench, offsets: dict[str, int], names: set[str]) -> int:
    """Events named in `names` the agents logged after `offsets` (bytes into their logs)."""
    assert bench.lab is not None
    count = 0
    for member, offset in offsets.items():
        path = bench.lab.directory / "agents" / f"{member}.log"
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") in names:
                count += 1
    return count


def run(args: argparse.Namespace, bench: Bench, result: dict[str, Any]) -> None:
    assert bench.writer is not None
    writer = bench.writer
    for number in range(1, args.runs + 1):
        try:
            old = bench.wait_settled()
        except AssertionError as exc:
            result["errors"].append(f"before run {number}: {exc}")
            log("not converged; repairing", error=exc)
            old = bench.repair()
        time.sleep(WARMUP_S)
        log("switchover", run=number, old=old)
        start = time.monotonic()
        command, took = _switchover(bench)
        result["switchover_command_s"].append(round(took, 3))
        candidate = None
        if command.returncode == 0:
            try:
                candidate = json.loads(command.stdout).get("candidate")
            except ValueError:
                result["errors"].append(f"run {number}: output is not JSON: {command.stdout!r}")
        else:
            sentence = command.stderr.strip() or f"exit code {command.returncode}"
            result["errors"].append(f"run {number}: switchover failed: {sentence}")
        remaining = start + WINDOW_S - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        gap = round(longest_gap(writer, start, start + WINDOW_S), 3)
        result["runs"].append(gap)
        try:
            new = bench.wait_settled()
        except AssertionError as exc:
            result["errors"].append(f"run {number}: did not converge afterwards: {exc}")
            log("not converged afterwards; repairing", run=number, error=exc)
            new = bench.repair()
        if candidate is not None and new != candidate:
            result["errors"].append(f"run {number}: {new} leads, not the candidate {candidate}")
        result["details"].append(
            {
                "run": number,
                "old_primary": old,
                "candidate": candidate,
                "new_primary": new,
                "unavailable_s": gap,
                "command_s": round(took, 3),
                "exit_code": command.returncode,
            }
        )
        log("run done", run=number, unavailable_s=gap, command_s=round(took, 3), new=new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    parser.add_argument("--keep-lab", action="store_true", help="keep the lab's files")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    started = time.monotonic()
    bench = Bench("bench-switchover")
    bench.keep_files = args.keep_lab
    result: dict[str, Any] = {
        "scenario": "switchover",
        "runs": [],
        "median_unavailable_s": None,
        "max_unavailable_s": None,
        "lost_writes": None,
        "split_brain": None,
        "acknowledged": None,
        "switchover_command_s": [],
        "rewinds": None,
        "target_median_s": TARGET_MEDIAN_S,
        "settings": bench.settings,
        "errors": [],
        "details": [],
    }
    with recording(result) as outcome, bench.running():
        offsets = _log_sizes(bench)
        run(args, bench, result)
        report = bench.finish()
        result["lost_writes"] = len(report.lost_writes)
        result["split_brain"] = len(report.split_brain)
        result["acknowledged"] = report.acknowledged
        result["by_member"] = report.by_member
        result["rewinds"] = _count_events(bench, offsets, {"ha.rewind", "ha.clone"})
        if report.lost_writes:
            result["lost_ids_sample"] = report.lost_writes[:20]
        if report.split_brain:
            result["split_brain_pairs"] = report.split_brain
        if result["runs"]:
            result["median_unavailable_s"] = round(statistics.median(result["runs"]), 3)
            result["max_unavailable_s"] = max(result["runs"])
        missed = (result["median_unavailable_s"] or 0) > TARGET_MEDIAN_S
        if result["errors"] or report.lost_writes or report.split_brain or missed:
            bench.keep_files = True
    if outcome.interrupted:
        return 130
    return conclude(result, bench, started, args.json, ("errors", "lost_writes", "split_brain"))


if __name__ == "__main__":
    sys.exit(main())
