"""The S3 store against the lab's real S3 endpoint: the shared contract, and S3's own faults.

Each test writes under a prefix of its own, removed afterwards (moto keeps objects in RAM).
Faults the endpoint cannot produce itself (5xx, throttling, refused credentials, a
connection cut midway through a download) come from small real servers on loopback.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgwarden.lab import Lab, s3
from pgwarden.lab.net import free_port
from pgwarden.storage import ObjectExists, ObjectNotFound, StorageError
from pgwarden.storage.s3 import MIN_PART_SIZE, S3Store, _parts
from pgwarden.storage.s3_policy import S3Retry
from storage_contract import BoomError, ObjectStoreContract, chunked, failing_after

pytestmark = pytest.mark.integration

FAST = S3Retry(request_attempts=1, attempts=1, connect_timeout=1.0, read_timeout=5.0)


class S3Harness:
    part_size = MIN_PART_SIZE  # the smallest S3 (and moto) accepts
    # AWS S3 guarantees one winner; moto checks If-None-Match without a lock, so the
    # contract asks only for at least one winner and no mixed object there.
    atomic_if_absent = False

    def __init__(self, endpoint: s3.S3Endpoint) -> None:
        self.endpoint = endpoint
        self.prefix = f"test-{uuid.uuid4().hex[:12]}"
        self.stores: list[S3Store] = []
        self.client = s3.client(endpoint)

    def store(self, **options: Any) -> S3Store:
        settings: dict[str, Any] = {
            "endpoint_url": self.endpoint.url,
            "region": self.endpoint.region,
            "force_path_style": True,
            "part_size": self.part_size,
            "max_concurrency": 3,
        } | options
        store = S3Store(self.endpoint.bucket, f"{self.prefix}/{len(self.stores)}", **settings)
        self.stores.append(store)
        return store

    def uploads_in_progress(self) -> list[str]:
        answer = self.client.list_multipart_uploads(Bucket=self.endpoint.bucket, Prefix=self.prefix)
        return [upload["Key"] for upload in answer.get("Uploads", [])]

    def close(self) -> None:
        for store in self.stores:
            store.delete_many([info.key for info in store.list()])


@pytest.fixture
def endpoint(services: Lab, monkeypatch: pytest.MonkeyPatch) -> s3.S3Endpoint:
    """The lab endpoint, with its credentials (only) in the environment."""
    assert services.s3 is not None
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", services.s3.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", services.s3.secret_access_key)
    return services.s3


@pytest.fixture
def harness(endpoint: s3.S3Endpoint) -> Iterator[S3Harness]:
    h = S3Harness(endpoint)
    yield h
    h.close()


class TestS3StoreContract(ObjectStoreContract):
    pass


# --------------------------------------------------------------------- multipart uploads


def test_a_large_stream_is_one_multipart_object(harness: S3Harness) -> None:
    store = harness.store()
    data = os.urandom(2 * harness.part_size + 1)
    assert store.put_stream("big", chunked(data, 3 * harness.part_size)) == len(data)
    answer = harness.client.head_object(Bucket=harness.endpoint.bucket, Key=f"{store.prefix}/big")
    assert answer["ETag"].endswith('-3"')  # three parts
    assert store.get("big") == data


def test_a_failed_stream_aborts_its_multipart_upload(harness: S3Harness) -> None:
    store = harness.store()
    data = os.urandom(3 * harness.part_size)
    with pytest.raises(BoomError):
        store.put_stream("file", failing_after(data, 1 << 20, 2 * harness.part_size + 1))
    assert harness.uploads_in_progress() == []
    assert not store.exists("file")


def test_losing_a_conditional_multipart_write_aborts_it(harness: S3Harness) -> None:
    store = harness.store()

    def chunks() -> Iterator[bytes]:
        yield os.urandom(harness.part_size)
        store.put("seg", b"winner", if_absent=True)
        yield os.urandom(harness.part_size)

    with pytest.raises(ObjectExists, match=f"s3://{harness.endpoint.bucket}/.*/seg"):
        store.put_stream("seg", chunks(), if_absent=True)
    assert harness.uploads_in_progress() == []
    assert store.get("seg") == b"winner"


@pytest.mark.parametrize(("sse", "kms_key_id"), [("AES256", None), ("aws:kms", "alias/pgw")])
def test_server_side_encryption_is_requested(
    harness: S3Harness, sse: str, kms_key_id: str | None
) -> None:
    store = harness.store(sse=sse, kms_key_id=kms_key_id)
    store.put("small", b"x")
    store.put_stream("big", chunked(os.urandom(harness.part_size + 1), 1 << 20))
    for key in ("small", "big"):
        answer = harness.client.head_object(
            Bucket=harness.endpoint.bucket, Key=f"{store.prefix}/{key}"
        )
        assert answer["ServerSideEncryption"] == sse
        assert answer.get("SSEKMSKeyId") == kms_key_id


def test_constructor_refuses_impossible_settings(harness: S3Harness) -> None:
    with pytest.raises(StorageError, match="part size"):
        harness.store(part_size=1 << 20)
    with pytest.raises(StorageError, match="KMS key id"):
        harness.store(sse="AES256", kms_key_id="alias/x")
    with pytest.raises(StorageError, match="concurrency"):
        harness.store(max_concurrency=0)
    with pytest.raises(StorageError, match="page size"):
        harness.store().list(page_size=5000)


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=40), max_size=30),
    part_size=st.integers(min_value=1, max_value=17),
)
def test_parts_regroup_any_chunks_exactly(sizes: list[int], part_size: int) -> None:
    data = os.urandom(sum(sizes))
    chunks, offset = [], 0
    for size in sizes:
        chunks.append(data[offset : offset + size])
        offset += size
    parts = list(_parts(chunks, part_size))
    assert b"".join(parts) == data
    assert all(len(part) == part_size for part in parts[:-1])
    assert all(0 < len(part) <= part_size for part in parts)


# --------------------------------------------------------------------- credentials, endpoint


def test_endpoint_and_credentials_from_the_environment(
    endpoint: s3.S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in endpoint.env().items():
        monkeypatch.setenv(name, value)
    store = S3Store(endpoint.bucket, f"test-{uuid.uuid4().hex[:12]}", force_path_style=True)
    assert store.endpoint == endpoint.url
    store.put("x", b"from env")
    assert store.get("x") == b"from env"
    store.delete("x")


def test_credentials_from_a_named_profile(
    endpoint: s3.S3Endpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[backup]\naws_access_key_id = {endpoint.access_key_id}\n"
        f"aws_secret_access_key = {endpoint.secret_access_key}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    store = S3Store(endpoint.bucket, prefix, endpoint_url=endpoint.url, profile="backup")
    store.put("x", b"from profile")
    assert store.get("x") == b"from profile"
    store.delete("x")
    with pytest.raises(StorageError, match=r"^AWS profile 'nightly' is not defined$"):
        S3Store(endpoint.bucket, prefix, endpoint_url=endpoint.url, profile="nightly")


def test_missing_credentials_are_one_sentence(
    endpoint: s3.S3Endpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = S3Store(endpoint.bucket, "p", endpoint_url=endpoint.url, retry=FAST)
    with pytest.raises(StorageError, match=r"^no usable S3 credentials in the environment"):
        store.get("x")


def test_a_missing_bucket_is_named(endpoint: s3.S3Endpoint) -> None:
    store = S3Store("no-such-bucket", "p", endpoint_url=endpoint.url, force_path_style=True)
    with pytest.raises(StorageError, match=r"^bucket no-such-bucket does not exist at http"):
        store.put("x", b"1")


def test_an_unreachable_endpoint_fails_fast_in_one_sentence(endpoint: s3.S3Endpoint) -> None:
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    retry = S3Retry(request_attempts=2, attempts=2, connect_timeout=1.0, sleep=lambda _: None)
    store = S3Store("bucket", "pfx", endpoint_url=url, force_path_style=True, retry=retry)
    started = time.monotonic()
    for attempt in (
        lambda: store.get("k"),
        lambda: store.put("k", b"x"),
        lambda: list(store.list()),
    ):
        with pytest.raises(StorageError) as raised:
            attempt()
        message = str(raised.value)
        assert message.startswith(f"S3 endpoint {url} did not answer while ")
        assert "s3://bucket/pfx" in message
        assert "\n" not in message
    assert time.monotonic() - started < 10


# --------------------------------------------------------------------- retries, on a stub server


class StubS3:
    """An HTTP server answering every request with one fixed S3 error."""

    def __init__(self, status: int, code: str) -> None:
        self.requests = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers `Expect: 100-continue` at once

            def _answer(self) -> None:
                stub.requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                body = (
                    f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                    f"<Message>stub says {code}</Message></Error>"
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = _answer  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Any]:
    stubs: list[StubS3] = []

    def make(status: int, code: str) -> StubS3:
        stubs.append(StubS3(status, code))
        return stubs[-1]

    yield make
    for server in stubs:
        server.close()


def stub_store(url: str, **retry: Any) -> tuple[S3Store, list[float]]:
    sleeps: list[float] = []
    policy = S3Retry(**({"request_attempts": 1, "attempts": 3} | retry), sleep=sleeps.append)
    store = S3Store("bkt", "pfx", endpoint_url=url, force_path_style=True, retry=policy)
    return store, sleeps


@pytest.mark.usefixtures("endpoint")
def test_server_errors_are_retried_by_both_layers_then_named(stub: Any) -> None:
    server = stub(500, "InternalError")
    store, sleeps = stub_store(server.url, request_attempts=2, attempts=2)
    with pytest.raises(StorageError) as raised:
        store.get("wal/seg")
    assert server.requests == 4  # botocore twice, for each of tenacity's two attempts
    assert len(sleeps) == 1
    assert str(raised.value) == (
        f"S3 endpoint {server.url} failed while reading s3://bkt/pfx/wal/seg "
        "(500 InternalError: stub says InternalError)"
    )


@pytest.mark.usefixtures("endpoint")
def test_throttling_is_retried_then_named(stub: Any) -> None:
    server = stub(503, "SlowDown")
    store, sleeps = stub_store(server.url, request_attempts=1, attempts=3)
    with pytest.raises(StorageError) as raised:
        store.put("k", b"x")
    assert (server.requests, len(sleeps)) == (3, 2)
    assert (
        str(raised.value) == "S3 kept throttling requests while writing s3://bkt/pfx/k (SlowDown)"
    )


CLIENT_ERRORS = {
    "AccessDenied": "access denied to s3://bkt/pfx/k while reading it",
    "InvalidAccessKeyId": (
        "{url} refused the S3 credentials (InvalidAccessKeyId) while reading s3://bkt/pfx/k"
    ),
    "InvalidArgument": (
        "S3 refused reading s3://bkt/pfx/k (400 InvalidArgument: stub says InvalidArgument)"
    ),
}


@pytest.mark.usefixtures("endpoint")
@pytest.mark.parametrize(
    ("status", "code"),
    [(403, "AccessDenied"), (403, "InvalidAccessKeyId"), (400, "InvalidArgument")],
)
def test_client_errors_are_never_retried(stub: Any, status: int, code: str) -> None:
    server = stub(status, code)
    store, sleeps = stub_store(server.url, request_attempts=3)
    with pytest.raises(StorageError) as raised:
        store.get("k")
    assert (server.requests, sleeps) == (1, [])
    assert str(raised.value) == CLIENT_ERRORS[code].format(url=server.url)


# --------------------------------------------------------------------- interrupted downloads


class CuttingProxy:
    """A TCP proxy to `target` that cuts its first connection after `limit` response bytes."""

    def __init__(self, target: tuple[str, int], limit: int) -> None:
        self.target, self.limit = target, limit
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            limit = self.limit if self.connections == 1 else None
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, limit), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                if limit is not None and sent + len(data) > limit:
                    sink.sendall(data[: limit - sent])
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.closed = True
        self.listener.close()


@pytest.fixture
def proxy(harness: S3Harness) -> Iterator[CuttingProxy]:
    handle = CuttingProxy((harness.endpoint.host, harness.endpoint.port), limit=400_000)
    yield handle
    handle.close()


@pytest.mark.parametrize("whole", [False, True], ids=["get_stream", "get"])
def test_a_download_cut_midway_resumes_where_it_stopped(
    harness: S3Harness, proxy: CuttingProxy, whole: bool
) -> None:
    data = os.urandom(3 << 20)
    harness.store().put("restore/me", data)
    through_proxy = S3Store(
        harness.endpoint.bucket, harness.stores[0].prefix, endpoint_url=proxy.url,
        force_path_style=True, retry=S3Retry(sleep=lambda _: None),
    )  # fmt: skip
    if whole:
        received = through_proxy.get("restore/me")
    else:
        received = b"".join(through_proxy.get_stream("restore/me", chunk_size=64 * 1024))
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    assert proxy.connections >= 2


def test_a_download_resumed_after_the_object_changed_fails(
    harness: S3Harness, proxy: CuttingProxy
) -> None:
    store = harness.store()
    store.put("restore/me", os.urandom(2 << 20))
    through_proxy = S3Store(
        harness.endpoint.bucket, store.prefix, endpoint_url=proxy.url,
        force_path_style=True, retry=S3Retry(sleep=lambda _: None),
    )  # fmt: skip
    chunks = through_proxy.get_stream("restore/me", chunk_size=64 * 1024)
    next(chunks)
    store.put("restore/me", b"replaced meanwhile")
    with pytest.raises(StorageError, match=r"restore/me was replaced while being read$"):
        list(chunks)


def test_get_stream_of_a_missing_object_fails_on_first_read(harness: S3Harness) -> None:
    chunks = harness.store().get_stream("absent")  # no request yet
    with pytest.raises(ObjectNotFound, match=r"^object s3://.*/absent does not exist$"):
        next(chunks)
