"""Running a backup's or restore's tasks on a thread pool, with progress and fail-fast."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")


def run_all(
    jobs: int,
    tasks: Iterable[Callable[[], T]],
    *,
    tick: Callable[[], None] | None = None,
    on_failure: Callable[[], None] | None = None,
) -> list[T]:
    """Run `tasks` on `jobs` threads; `tick` about every 0.2 s (progress). On the first
    failure: `on_failure` (tell running tasks to stop), cancel the rest, wait for the
    running ones, raise that failure. Results in completion order."""
    results: list[T] = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        pending: set[Future[T]] = {pool.submit(task) for task in tasks}
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            if tick is not None:
                tick()
            failed = next((f for f in done if f.exception() is not None), None)
            if failed is not None:
                if on_failure is not None:
                    on_failure()
                for future in pending:
                    future.cancel()
                wait(pending)
                error = failed.exception()
                assert error is not None
                raise error
            results.extend(f.result() for f in done)
    return results
