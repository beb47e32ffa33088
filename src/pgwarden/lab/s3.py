"""An S3-compatible endpoint on loopback (moto's server) holding one bucket."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgwarden.lab.net import S3_ADDRESS, free_port
from pgwarden.lab.procs import LabError, Registry, is_running, log_tail, spawn
from pgwarden.retry import DeadlineExceededError, poll_until

PROCESS_NAME = "s3"


@dataclass(frozen=True)
class S3Endpoint:
    """Where the lab's object storage answers and how to reach it."""

    host: str
    port: int
    bucket: str
    region: str = "us-east-1"
    # moto accepts any credentials; these fixed ones are not secrets.
    access_key_id: str = "pgwarden-lab"
    secret_access_key: str = "pgwarden-lab-secret"  # noqa: S105

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 at this endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.url,
        }


def plan(bucket: str = "pgwarden") -> S3Endpoint:
    return S3Endpoint(S3_ADDRESS, free_port(S3_ADDRESS), bucket)


def start(directory: Path, registry: Registry, endpoint: S3Endpoint) -> None:
    argv = [sys.executable, "-m", "moto.server", "-H", endpoint.host, "-p", str(endpoint.port)]
    spawn(registry, PROCESS_NAME, argv, directory / "s3.log")


def _answers(endpoint: S3Endpoint) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint.url}/", timeout=0.5) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(registry: Registry, endpoint: S3Endpoint, timeout: float = 30.0) -> None:
    """Wait until the endpoint answers HTTP, then create the bucket."""

    def ready() -> bool:
        record = registry.get(PROCESS_NAME)
        if record is None or not is_running(record):
            raise LabError(
                "the S3 endpoint exited during start; its log ends with:\n"
                + log_tail(record.log if record else "")
            )
        return _answers(endpoint)

    try:
        poll_until(ready, timeout)
    except DeadlineExceededError:
        record = registry.get(PROCESS_NAME)
        raise LabError(
            f"the S3 endpoint did not answer within {timeout:g} s; its log ends with:\n"
            + log_tail(record.log if record else "")
        ) from None
    client(endpoint).create_bucket(Bucket=endpoint.bucket)


def client(endpoint: S3Endpoint) -> Any:
    """A boto3 S3 client for the endpoint (path-style addressing)."""
    import boto3  # noqa: PLC0415 - heavy import, only when S3 is used
    from botocore.config import Config  # noqa: PLC0415

    return boto3.client(
        "s3",
        endpoint_url=endpoint.url,
        region_name=endpoint.region,
        aws_access_key_id=endpoint.access_key_id,
        aws_secret_access_key=endpoint.secret_access_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )
