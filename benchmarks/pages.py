"""Throughput of data page checksum verification (pgwarden.backup.pages).

Data: --mib (256) MiB of synthetic pages: random bytes with a small pd_lsn and the
pd_checksum PostgreSQL would compute, so every page is checked in full and none is bad.
Figures (MB = 10^6 bytes, best of --repeat runs):
- `mb_per_s`, `pages_per_s`: one PageChecker fed --chunk-kib (1024) chunks on one thread,
  as a backup reading a relation file does;
- `page_checksums_mb_per_s`: the checksums alone over the whole buffer;
- `two_threads_mb_per_s`: two PageCheckers on two Python threads at once (aggregate),
  as a backup with two readers does; numpy releases the GIL for its big operations.

Prints JSON on stdout (and to --json FILE); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pgwarden.backup.pages import BLOCK_SIZE, PageChecker, page_checksums

MIB = 1 << 20
RELATION = "base/5/16384"
START_LSN = 1 << 40  # after every synthetic page's LSN: no page is skipped


def log(message: str) -> None:
    print(f"[pages] {message}", file=sys.stderr, flush=True)


def valid_pages(total: int) -> bytes:
    """`total` bytes of random pages carrying their correct checksums (blocks 0, 1, ...)."""
    pages = np.frombuffer(bytearray(os.urandom(total)), dtype=np.uint8).reshape(-1, BLOCK_SIZE)
    halves = pages.view("<u2")
    halves[:, 0:4] = 0
    halves[:, 2] = np.arange(len(pages), dtype=np.uint16)  # pd_lsn 0/blockno: before START_LSN
    halves[:, 4] = page_checksums(pages.data, 0)
    return pages.tobytes()


def best_time(work: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def check_file(data: bytes, chunk: int) -> None:
    checker = PageChecker(RELATION, START_LSN)
    view = memoryview(data)
    for offset in range(0, len(data), chunk):
        checker.feed(view[offset : offset + chunk])
    bad = checker.finish()
    if bad or checker.partial_tail:
        raise SystemExit(f"synthetic pages judged bad: {bad[:5]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="size of the data set (MiB)")
    parser.add_argument("--chunk-kib", type=int, default=1024, help="size of each fed chunk")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best counts")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    log(f"preparing {args.mib} MiB of valid pages")
    data = valid_pages(args.mib * MIB)
    chunk = args.chunk_kib * 1024
    pages = len(data) // BLOCK_SIZE

    log("one checker, one thread")
    one_s = best_time(lambda: check_file(data, chunk), args.repeat)
    log("page_checksums alone")
    bare_s = best_time(lambda: page_checksums(data, 0).sum(), args.repeat)
    log("two checkers on two threads")
    with ThreadPoolExecutor(max_workers=2) as pool:

        def both() -> None:
            for done in [pool.submit(check_file, data, chunk) for _ in range(2)]:
                done.result()

        two_s = best_time(both, args.repeat)

    result: dict[str, Any] = {
        "pages_per_s": round(pages / one_s),
        "mb_per_s": round(len(data) / one_s / 1e6),
        "page_checksums_mb_per_s": round(len(data) / bare_s / 1e6),
        "two_threads_mb_per_s": round(2 * len(data) / two_s / 1e6),
        "data_mib": args.mib,
        "chunk_kib": args.chunk_kib,
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
    }
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
