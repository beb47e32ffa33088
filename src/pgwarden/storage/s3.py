"""`S3Store`: objects in an S3-compatible bucket under a prefix, through boto3.

- Credentials come from the environment or the named profile (boto3's usual chain); the
  endpoint from `endpoint_url`, else `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`, else AWS.
- `put(if_absent=True)` is a conditional write (`If-None-Match: *`), atomic on AWS S3 and
  on moto: of two concurrent writers exactly one wins. An endpoint that ignores the header
  (older MinIO or Ceph releases) would overwrite silently; do not use those for WAL.
- `put_stream` sends a stream larger than one part as a multipart upload whose parts are
  uploaded by `max_concurrency` threads while the next part is read, with at most about
  `max_concurrency + 2` parts in memory. Any failure, the caller's iterator raising
  included, aborts the upload, so no partial object ever becomes visible. (Configure an
  `AbortIncompleteMultipartUpload` lifecycle rule on the bucket for uploads of a process
  killed midway: S3 keeps their parts, invisibly, until aborted.)
- `get_stream` resumes an interrupted download where it stopped (a ranged GET pinned to the
  object's ETag), so a restore survives a dropped connection.
- `head`/`exists` cannot tell a missing bucket from a missing object (an answer to HEAD
  has no body to say which); every other call names the missing bucket.
- Retries and error sentences: see `s3_policy`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC
from functools import partial
from typing import Any, Literal, TypeVar

import boto3
import botocore.session
import tenacity
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    IncompleteReadError,
    ProfileNotFound,
    ReadTimeoutError,
    ResponseStreamingError,
)

from pgwarden.logs import get_logger
from pgwarden.storage.base import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_PAGE_SIZE,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
    check_key,
    check_metadata,
    check_prefix,
)
from pgwarden.storage.s3_policy import S3Retry, error_code, is_transient, translate

T = TypeVar("T")
log = get_logger("storage.s3")

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 8 * MIB
SseMode = Literal["none", "AES256", "aws:kms"]
_STREAM_ERRORS = (ReadTimeoutError, ResponseStreamingError, IncompleteReadError)


def _parts(chunks: Iterable[bytes], part_size: int) -> Iterator[bytes]:
    """Regroup `chunks` into parts of exactly `part_size` bytes, the last one shorter."""
    pending: list[bytes] = []
    pending_size = 0
    for chunk in chunks:
        if not chunk:
            continue
        pending.append(chunk)
        pending_size += len(chunk)
        if pending_size < part_size:
            continue
        joined = bytes(pending[0]) if len(pending) == 1 else b"".join(pending)
        if pending_size == part_size:  # the common case of aligned chunks: no copy
            yield joined
            pending, pending_size = [], 0
            continue
        view, start = memoryview(joined), 0
        while pending_size - start >= part_size:
            yield bytes(view[start : start + part_size])
            start += part_size
        rest = bytes(view[start:])
        pending, pending_size = ([rest] if rest else []), len(rest)
    if pending:
        yield b"".join(pending)


class S3Store:
    """An `ObjectStore` in `bucket` under `prefix` (keys become `<prefix>/<key>`)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        credentials_file: str | None = None,
        force_path_style: bool = False,
        sse: SseMode = "none",
        kms_key_id: str | None = None,
        max_concurrency: int = 4,
        part_size: int = DEFAULT_PART_SIZE,
        retry: S3Retry | None = None,
    ) -> None:
        if sse not in ("none", "AES256", "aws:kms"):
            raise StorageError(f"S3 encryption {sse!r} is not one of none, AES256, aws:kms")
        if kms_key_id is not None and sse != "aws:kms":
            raise StorageError(f"a KMS key id is only used with sse 'aws:kms', not {sse!r}")
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise StorageError(f"S3 part size {part_size} is outside S3's limits of 5 MiB to 5 GiB")
        if max_concurrency < 1:
            raise StorageError(f"S3 upload concurrency must be at least 1, got {max_concurrency}")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self.profile = profile
        self.max_concurrency = max_concurrency
        self.part_size = part_size
        self.retry = retry or S3Retry()
        self._root = f"{prefix}/" if prefix else ""
        self._sse: dict[str, str] = {}
        if sse != "none":
            self._sse["ServerSideEncryption"] = sse
        if kms_key_id is not None:
            self._sse["SSEKMSKeyId"] = kms_key_id
        try:
            core = botocore.session.Session()
            if credentials_file is not None:
                core.set_config_variable("credentials_file", credentials_file)
            session = boto3.session.Session(
                botocore_session=core, profile_name=profile, region_name=region
            )
        except ProfileNotFound:
            raise StorageError(f"AWS profile {profile!r} is not defined") from None
        config = Config(
            retries={"mode": "standard", "total_max_attempts": self.retry.request_attempts},
            connect_timeout=self.retry.connect_timeout,
            read_timeout=self.retry.read_timeout,
            # Part uploads, plus the reads and lists other threads do meanwhile.
            max_pool_connections=max(10, 2 * max_concurrency),
            s3={"addressing_style": "path" if force_path_style else "auto"},
            # Every object carries its own checksums (records, trailer, zstd frame), checked
            # on every read; S3's optional CRC32 on top would cost a pass over each body.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client: Any = session.client("s3", endpoint_url=endpoint_url, config=config)
        self.endpoint: str = self._client.meta.endpoint_url

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self._root}, endpoint={self.endpoint})"

    # ------------------------------------------------------------------ plumbing
    def _full(self, key: str) -> str:
        return self._root + check_key(key)

    def _where(self, full_key: str) -> str:
        return f"s3://{self.bucket}/{full_key}"

    def _call(self, action: str, key: str | None, full_key: str, operation: Callable[[], T]) -> T:
        """Run one S3 call under the retry policy; failures become one StorageError."""
        where = self._where(full_key)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            reason = "/".join(map(str, error_code(exc))) if isinstance(exc, ClientError) else ""
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "storage.s3.retry", action=action, object=where, attempt=state.attempt_number,
                wait_s=round(wait, 3), reason=reason,
            )  # fmt: skip

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            stop=tenacity.stop_after_attempt(self.retry.attempts),
            wait=tenacity.wait_exponential(
                multiplier=self.retry.initial_wait, max=self.retry.max_wait
            )
            + tenacity.wait_random(0, self.retry.initial_wait),
            sleep=self.retry.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(operation)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, action, where, key) from exc

    def _error(self, exc: BaseException, action: str, where: str, key: str | None) -> StorageError:
        return translate(
            exc, action=action, where=where, endpoint=self.endpoint, key=key,
            retry=self.retry, profile=self.profile,
        )  # fmt: skip

    # ------------------------------------------------------------------ writes
    def put(
        self,
        key: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        *,
        if_absent: bool = False,
    ) -> None:
        """Store `data` at `key`; see `ObjectStore.put`."""
        full = self._full(key)
        arguments: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": full,
            "Body": data,
            "Metadata": check_metadata(key, metadata),
            **self._sse,
        }
        if if_absent:
            arguments["IfNoneMatch"] = "*"
        self._call("writing", key, full, lambda: self._client.put_object(**arguments))

    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes],
        metadata: Mapping[str, str] | None = None,
        *,
        if_absent: bool = False,
    ) -> int:
        """Store the chunks (multipart when over one part) and return the bytes written."""
        full = self._full(key)
        checked = check_metadata(key, metadata)
        if if_absent and self.exists(key):
            # A cheap early answer before uploading; the conditional write is the real check.
            raise ObjectExists(key, self._where(full))
        parts = _parts(chunks, self.part_size)
        first = next(parts, b"")
        second = next(parts, None)
        if second is None:
            self.put(key, first, checked, if_absent=if_absent)
            return len(first)
        return self._multipart(key, full, checked, [first, second], parts, if_absent=if_absent)

    def _multipart(
        self,
        key: str,
        full: str,
        metadata: dict[str, str],
        head: list[bytes],
        rest: Iterator[bytes],
        *,
        if_absent: bool,
    ) -> int:
        upload = self._call(
            "writing", key, full,
            lambda: self._client.create_multipart_upload(
                Bucket=self.bucket, Key=full, Metadata=metadata, ChecksumAlgorithm="CRC32",
                **self._sse,
            ),
        )  # fmt: skip
        upload_id: str = upload["UploadId"]
        try:
            completed, total = self._upload_parts(key, full, upload_id, head, rest)
            arguments: dict[str, Any] = {
                "Bucket": self.bucket,
                "Key": full,
                "UploadId": upload_id,
                "MultipartUpload": {"Parts": completed},
            }
            if if_absent:
                arguments["IfNoneMatch"] = "*"
            self._call(
                "writing", key, full, lambda: self._client.complete_multipart_upload(**arguments)
            )
        except BaseException:
            self._abort(full, upload_id)
            raise
        return total

    def _upload_parts(
        self, key: str, full: str, upload_id: str, head: list[bytes], rest: Iterator[bytes]
    ) -> tuple[list[dict[str, Any]], int]:
        """Upload every part, `max_concurrency` at a time, while reading the next one."""
        slots = threading.BoundedSemaphore(self.max_concurrency)
        failed = threading.Event()
        futures: list[Future[dict[str, Any]]] = []
        total = 0

        def settle(future: Future[dict[str, Any]]) -> None:
            if future.cancelled() or future.exception() is not None:
                failed.set()
            slots.release()

        def upload(number: int, body: bytes) -> dict[str, Any]:
            answer = self._call(
                "writing", key, full,
                lambda: self._client.upload_part(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number,
                    Body=body, ChecksumAlgorithm="CRC32",
                ),
            )  # fmt: skip
            part = {"PartNumber": number, "ETag": answer["ETag"]}
            if "ChecksumCRC32" in answer:
                part["ChecksumCRC32"] = answer["ChecksumCRC32"]
            return part

        pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="s3-part")
        try:
            for number, body in enumerate(_chain(head, rest), start=1):
                if number > MAX_PARTS:
                    raise StorageError(
                        f"cannot write {self._where(full)}: more than {MAX_PARTS} parts of "
                        f"{self.part_size} bytes; use a larger part size"
                    )
                slots.acquire()
                if failed.is_set():
                    slots.release()
                    break
                future = pool.submit(upload, number, body)
                future.add_done_callback(settle)
                futures.append(future)
                total += len(body)
            completed = [future.result() for future in futures]  # re-raises a part's failure
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return completed, total

    def _abort(self, full: str, upload_id: str) -> None:
        try:
            self._call(
                "aborting the upload of", None, full,
                lambda: self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id
                ),
            )  # fmt: skip
        except StorageError as exc:
            # The original failure matters more; the parts stay invisible until a
            # lifecycle rule or a later abort removes them.
            log.warning("storage.s3.abort_failed", object=self._where(full), error=str(exc))

    # ------------------------------------------------------------------ reads
    def get(self, key: str) -> bytes:
        """The whole object; ObjectNotFound if there is none."""
        # Through the resumable reader: a connection cut midway costs a ranged GET, not
        # a failure. Joining a few large chunks costs one copy.
        return b"".join(self._read_chunks(key, self._full(key), 8 * DEFAULT_CHUNK_SIZE))

    def get_stream(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """The object in chunks, resuming where it stopped if the connection breaks."""
        return self._read_chunks(key, self._full(key), chunk_size)

    def _read_chunks(self, key: str, full: str, chunk_size: int) -> Iterator[bytes]:
        offset, failures, failed_at = 0, 0, -1
        size: int | None = None
        etag: str | None = None
        while size is None or offset < size:
            arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": full}
            if etag is not None:
                # Resume only the same version of the object: 412 if it was replaced.
                arguments |= {"IfMatch": etag, "Range": f"bytes={offset}-"}
            try:
                answer = self._call(
                    "reading", key, full, partial(self._client.get_object, **arguments)
                )
            except ObjectExists as exc:  # If-Match failed: only possible when resuming
                raise StorageError(
                    f"object {self._where(full)} was replaced while being read"
                ) from exc
            if etag is None:
                etag, size = answer["ETag"], int(answer["ContentLength"])
            body = answer["Body"]
            try:
                for chunk in body.iter_chunks(chunk_size):
                    offset += len(chunk)
                    yield chunk
            except _STREAM_ERRORS as exc:
                # Count only failures without progress in between: a long download may
                # survive many separate blips, not one endpoint that keeps failing.
                failures = failures + 1 if offset == failed_at else 1
                failed_at = offset
                if failures >= self.retry.attempts:
                    raise self._error(exc, "reading", self._where(full), key) from exc
                log.warning(
                    "storage.s3.resume", object=self._where(full), offset=offset,
                    attempt=failures, reason=type(exc).__name__,
                )  # fmt: skip
                self.retry.sleep(self.retry.backoff(failures))
            finally:
                body.close()

    def head(self, key: str) -> ObjectInfo:
        """Size, metadata and modification time of the object at `key`."""
        full = self._full(key)
        answer = self._call(
            "checking", key, full, lambda: self._client.head_object(Bucket=self.bucket, Key=full)
        )
        return ObjectInfo(
            key, int(answer["ContentLength"]), dict(answer.get("Metadata") or {}),
            answer["LastModified"].astimezone(UTC),
        )  # fmt: skip

    def exists(self, key: str) -> bool:
        """Whether an object is stored at `key`."""
        try:
            self.head(key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "", *, page_size: int = DEFAULT_PAGE_SIZE) -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, sorted by key, `page_size` per request."""
        check_prefix(prefix)
        if not 1 <= page_size <= 1000:
            raise StorageError(f"S3 list page size must be 1 to 1000, got {page_size}")
        return self._list(self._root + prefix, page_size)

    def _list(self, full_prefix: str, page_size: int) -> Iterator[ObjectInfo]:
        token: str | None = None
        while True:
            arguments: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": full_prefix,
                "MaxKeys": page_size,
            }
            if token is not None:
                arguments["ContinuationToken"] = token
            page = self._call(
                "listing", None, full_prefix, partial(self._client.list_objects_v2, **arguments)
            )
            for item in page.get("Contents", ()):
                key = item["Key"][len(self._root) :]
                yield ObjectInfo(key, int(item["Size"]), None, item["LastModified"].astimezone(UTC))
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    # ------------------------------------------------------------------ deletes
    def delete(self, key: str) -> None:
        """Remove the object at `key`; nothing if there is none."""
        full = self._full(key)
        self._call(
            "deleting", None, full,
            lambda: self._client.delete_object(Bucket=self.bucket, Key=full),
        )  # fmt: skip

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove every object named, 1000 per request; the keys are all checked first."""
        full_keys = [self._full(key) for key in keys]
        for start in range(0, len(full_keys), 1000):
            self._delete_batch(full_keys[start : start + 1000])

    def _delete_batch(self, batch: Sequence[str]) -> None:
        delete = {"Objects": [{"Key": full} for full in batch], "Quiet": True}
        answer = self._call(
            "deleting", None, batch[0],
            lambda: self._client.delete_objects(Bucket=self.bucket, Delete=delete),
        )  # fmt: skip
        errors = answer.get("Errors") or []
        if errors:
            first = errors[0]
            more = f" and {len(errors) - 1} more objects" if len(errors) > 1 else ""
            raise StorageError(
                f"S3 refused deleting {self._where(first.get('Key', '?'))}{more} "
                f"({first.get('Code', '?')}: {first.get('Message', '')})"
            )


def _chain(head: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from head
    yield from rest
