"""Retry and polling policies, in one place, with the clock and sleep injectable.

Every wait in pgwarden has a deadline; nothing loops forever. Tests pass a fake `sleep`
and `clock` to make the policies deterministic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import tenacity

T = TypeVar("T")


class DeadlineExceededError(Exception):
    """A polled condition did not hold before its deadline."""


def poll_until(
    check: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.05,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call `check` every `interval` seconds until it returns a value other than None/False.

    `check` may raise to abort at once (for example when the process it waits for died).
    Raises DeadlineExceededError when `timeout` seconds pass first.
    """
    start = clock()
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda value: value is None or value is False),
        # Measured with our clock, not tenacity's, so tests can drive time.
        stop=lambda _state: clock() - start >= timeout,
        wait=tenacity.wait_fixed(interval),
        sleep=sleep,
        reraise=True,
    )
    try:
        result = retrying(check)
    except tenacity.RetryError as exc:
        raise DeadlineExceededError(f"not done within {timeout:g} s") from exc
    return result  # type: ignore[return-value]  # None and False were retried
