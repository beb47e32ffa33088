"""Structured logging: JSON lines for machines, readable lines on a terminal.

Every event is one structlog call with a stable dotted name (`lab.service.started`) and
key-value context. `cluster` and `member` are bound once per process with `bind_identity`
and then carried by every event.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

LEVELS = ("debug", "info", "warning", "error")

# Keys whose values must never reach a log line, whatever the caller passes.
_SECRET_KEYS = frozenset({"password", "secret", "token", "secret_access_key", "key"})


def _mask_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in event_dict:
        if key in _SECRET_KEYS or key.endswith(("_password", "_secret", "_token")):
            event_dict[key] = "********"
    return event_dict


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog events to `stream` (stderr) as JSON, or as console lines on a TTY."""
    out = stream if stream is not None else sys.stderr
    renderer: Any
    if out.isatty():
        renderer = structlog.dev.ConsoleRenderer(colors=True)
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_identity,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    _route_library_logs(level)


class _ToStructlog(logging.Handler):
    """Carry a library's standard-library log records into the structured stream."""

    def emit(self, record: logging.LogRecord) -> None:
        structlog.get_logger(component=record.name).log(record.levelno, record.getMessage())


def _route_library_logs(level: str) -> None:
    # kazoo narrates every reconnect attempt; pgwarden reports what matters (session
    # states, one-sentence errors) itself, so kazoo's own records show only at debug.
    for name in ("kazoo", "botocore", "boto3", "urllib3"):
        library = logging.getLogger(name)
        library.handlers = [_ToStructlog()]
        library.propagate = False
        library.setLevel(logging.DEBUG if level == "debug" else logging.CRITICAL)


_IDENTITY: dict[str, str] = {}


def bind_identity(cluster: str | None = None, member: str | None = None) -> None:
    """Attach `cluster` and `member` to every later event of this process, from every
    thread (context variables would reach only the calling thread)."""
    _IDENTITY.update({k: v for k, v in (("cluster", cluster), ("member", member)) if v})


def _add_identity(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in _IDENTITY.items():
        event.setdefault(key, value)
    return event


def get_logger(name: str) -> Any:
    """A structlog logger tagged with the emitting component.

    Until a program calls `configure_logging`, events at warning and above go to stderr
    as JSON lines: structlog's own default would print to stdout, which belongs to the
    program's output (a library user's, a test's, a command's JSON).
    """
    if not structlog.is_configured():
        configure_logging("warning")
    return structlog.get_logger(component=name)
