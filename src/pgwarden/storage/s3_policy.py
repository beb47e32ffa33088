"""How hard `S3Store` tries, what counts as worth retrying, and the sentence a failure becomes.

Two layers of retries, both bounded:

- botocore's own, in "standard" mode, `request_attempts` per request: connection errors,
  throttling and 5xx answers, with its short randomized backoff.
- around each whole call, tenacity, `attempts` times with exponential backoff up to
  `max_wait`, on throttling and 5xx answers only (an outage of a few seconds, a throttled
  prefix). Never on other 4xx answers: those do not get better by asking again. The one
  4xx retried is 409 ConditionalRequestConflict, which AWS answers to one of two
  concurrent conditional writes and documents as retryable (the retry then learns
  whether the other write won).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from pgwarden.storage.base import ObjectExists, ObjectNotFound, StorageError

THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "TooManyRequestsException",
        "SlowDown",
        "BandwidthLimitExceeded",
    }
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
    }
)


@dataclass(frozen=True)
class S3Retry:
    """Retry and timeout policy of one `S3Store`; `sleep` is injectable for tests."""

    request_attempts: int = 3  # botocore, per HTTP request (1 = no retry)
    attempts: int = 4  # tenacity, per call, on throttling and 5xx only
    initial_wait: float = 0.5
    max_wait: float = 8.0
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    sleep: Callable[[float], None] = time.sleep

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th consecutive failure (without jitter)."""
        return float(min(self.max_wait, self.initial_wait * 2 ** max(0, failures - 1)))


def error_code(exc: ClientError) -> tuple[str, int]:
    """The S3 error code and HTTP status of a ClientError."""
    response: dict[str, Any] = exc.response or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return code, status


def is_transient(exc: BaseException) -> bool:
    """Whether asking again could succeed: throttling, 5xx, a conditional-write conflict."""
    if not isinstance(exc, ClientError):
        return False
    code, status = error_code(exc)
    return (
        status >= 500
        or status == 429
        or code in THROTTLING_CODES
        or (status == 409 and code == "ConditionalRequestConflict")
    )


def translate(  # noqa: PLR0911, PLR0912 - one sentence per kind of failure, as a flat table
    exc: BaseException,
    *,
    action: str,
    where: str,
    endpoint: str,
    key: str | None = None,
    retry: S3Retry,
    profile: str | None = None,
) -> StorageError:
    """One sentence for a botocore failure while `action` (a verb: "writing") `where`.

    `key` (the store's key, not the full S3 key) turns not-found and precondition answers
    into ObjectNotFound and ObjectExists.
    """
    if isinstance(exc, ClientError):
        code, status = error_code(exc)
        message = str(exc.response.get("Error", {}).get("Message", "")).strip()
        detail = f"{status} {code}".strip() + (f": {message}" if message else "")
        if key is not None and (code in NOT_FOUND_CODES or (status == 404 and not code)):
            return ObjectNotFound(key, where)
        if key is not None and (code == "PreconditionFailed" or status == 412):
            return ObjectExists(key, where)
        if code == "NoSuchBucket":
            bucket = where.removeprefix("s3://").split("/", 1)[0]
            return StorageError(f"bucket {bucket} does not exist at {endpoint}")
        if code in CREDENTIAL_CODES:
            return StorageError(
                f"{endpoint} refused the S3 credentials ({code}) while {action} {where}"
            )
        if code == "AccessDenied" or status == 403:
            return StorageError(f"access denied to {where} while {action} it")
        if code in THROTTLING_CODES or status == 429:
            return StorageError(f"S3 kept throttling requests while {action} {where} ({code})")
        if status >= 500:
            return StorageError(f"S3 endpoint {endpoint} failed while {action} {where} ({detail})")
        return StorageError(f"S3 refused {action} {where} ({detail})")
    if isinstance(exc, ConnectTimeoutError):
        return StorageError(
            f"S3 endpoint {endpoint} did not accept a connection within "
            f"{retry.connect_timeout:g} s while {action} {where}"
        )
    if isinstance(exc, ReadTimeoutError):
        return StorageError(
            f"S3 endpoint {endpoint} did not answer within {retry.read_timeout:g} s "
            f"while {action} {where}"
        )
    if isinstance(exc, EndpointConnectionError):
        return StorageError(f"S3 endpoint {endpoint} did not answer while {action} {where}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        source = f"profile {profile!r}" if profile else "the environment or the AWS config files"
        return StorageError(f"no usable S3 credentials in {source} for {where}")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"S3 request failed while {action} {where}: {exc}")
    return StorageError(f"S3 request failed while {action} {where}: {exc!r}")
