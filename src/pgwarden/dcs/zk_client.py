"""kazoo plumbing for `ZooKeeperStore`: source-bound sockets, the negotiated session
timeout, znode operations with deadlines, and watches that survive reconnects.

kazoo is untyped; everything it hands back is `Any` and stays inside this module and
`zookeeper.py`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

from kazoo.exceptions import (
    BadVersionError as KazooBadVersionError,
)
from kazoo.exceptions import (
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    SessionExpiredError,
)
from kazoo.exceptions import (
    NodeExistsError as KazooNodeExistsError,
)
from kazoo.exceptions import (
    NoNodeError as KazooNoNodeError,
)
from kazoo.handlers import utils as handler_utils
from kazoo.handlers.threading import KazooTimeoutError, SequentialThreadingHandler
from kazoo.protocol.serialization import Connect
from kazoo.protocol.states import Callback, EventType

from pgwarden.dcs.base import StoreError
from pgwarden.dcs.znodes import BadVersionError, NodeExistsError, NoNodeError, Stat
from pgwarden.logs import get_logger

log = get_logger("dcs.zookeeper")


class _SourceBoundSockets:
    """The `socket` module, except that connections bind their source address.

    kazoo creates every TCP connection through `create_tcp_connection(module, ...)`;
    handing it this object makes each connection leave from `source_address`, so a
    network cut by address (iptables on loopback) isolates exactly this client.
    """

    def __init__(self, source_address: str | None, connect_timeout: float) -> None:
        self._source = (source_address, 0) if source_address else None
        self._connect_timeout = connect_timeout

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    def create_connection(
        self, address: tuple[str, int], timeout: float | None = None
    ) -> socket.socket:
        if timeout is None or timeout > self._connect_timeout:
            timeout = self._connect_timeout
        return socket.create_connection(address, timeout, source_address=self._source)


class BoundHandler(SequentialThreadingHandler):  # type: ignore[misc]  # kazoo is untyped
    """kazoo's threading handler with source-bound, time-limited TCP connects."""

    def __init__(self, source_address: str | None, connect_timeout: float) -> None:
        super().__init__()
        self._sockets = _SourceBoundSockets(source_address, connect_timeout)

    def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        return handler_utils.create_tcp_connection(self._sockets, *args, **kwargs)


def record_negotiated_timeout(client: Any, record: Callable[[float], None]) -> bool:
    """Call `record(seconds)` with the session timeout the server grants at each connect.

    kazoo 2.11 reads it from the Connect response into a local variable only, so wrap the
    connection's handshake (`_invoke`, which returns that response before kazoo reports
    CONNECTED). Returns False when kazoo's internals no longer allow it.
    """
    connection: Any = getattr(client, "_connection", None)
    invoke = getattr(connection, "_invoke", None)
    if connection is None or invoke is None:
        return False

    def invoke_and_record(timeout: float, request: Any, xid: Any = None) -> Any:
        result = invoke(timeout, request, xid)
        if isinstance(request, Connect) and isinstance(result, tuple):
            granted = getattr(result[0], "time_out", 0)
            if granted > 0:
                record(granted / 1000.0)
        return result

    connection._invoke = invoke_and_record
    return True


def _stat(zstat: Any) -> Stat:
    return Stat(zstat.version, zstat.ephemeralOwner or None)


class KazooTree:
    """The `Tree` operations on a connected kazoo client, each bounded by `timeout`."""

    def __init__(
        self, client: Any, hosts: str, timeout: float, connected: Callable[[], str | None]
    ) -> None:
        self._client = client
        self._hosts = hosts
        self._timeout = timeout
        self._not_connected = connected  # None when connected, else the state's name

    def _wait(self, result: Any, what: str) -> Any:
        try:
            return result.get(timeout=self._timeout)
        except KazooNoNodeError:
            raise NoNodeError(what) from None
        except KazooNodeExistsError:
            raise NodeExistsError(what) from None
        except KazooBadVersionError:
            raise BadVersionError(what) from None
        except KazooTimeoutError:
            raise StoreError(
                f"ZooKeeper at {self._hosts} did not answer within {self._timeout:g} s ({what})"
            ) from None
        except (ConnectionLoss, ConnectionClosedError, SessionExpiredError) as exc:
            raise StoreError(
                f"lost the connection to ZooKeeper at {self._hosts} while {what} "
                f"({type(exc).__name__})"
            ) from None
        except KazooException as exc:
            raise StoreError(f"ZooKeeper at {self._hosts} refused {what}: {exc!r}") from None

    def _call(self) -> Any:
        """The client, after failing fast when the connection is down: kazoo would queue
        the request and send it after a reconnect, long after we gave up on it."""
        state = self._not_connected()
        if state is not None:
            raise StoreError(f"not connected to ZooKeeper at {self._hosts} (session {state})")
        return self._client

    def get(self, path: str) -> tuple[bytes, Stat]:
        data, zstat = self._wait(self._call().get_async(path), f"reading {path}")
        return data, _stat(zstat)

    def get_many(self, paths: Sequence[str]) -> list[tuple[bytes, Stat] | None]:
        client = self._call()
        pending = [(path, client.get_async(path)) for path in paths]  # one pipelined batch
        found: list[tuple[bytes, Stat] | None] = []
        for path, result in pending:
            try:
                data, zstat = self._wait(result, f"reading {path}")
            except NoNodeError:
                found.append(None)
            else:
                found.append((data, _stat(zstat)))
        return found

    def exists(self, path: str) -> Stat | None:
        zstat = self._wait(self._call().exists_async(path), f"reading {path}")
        return _stat(zstat) if zstat is not None else None

    def children(self, path: str) -> list[str]:
        return list(self._wait(self._call().get_children_async(path), f"listing {path}"))

    def create(
        self, path: str, data: bytes, *, ephemeral: bool = False, sequence: bool = False
    ) -> str:
        result = self._call().create_async(path, data, ephemeral=ephemeral, sequence=sequence)
        return str(self._wait(result, f"creating {path}"))

    def set(self, path: str, data: bytes, version: int) -> Stat:
        return _stat(self._wait(self._call().set_async(path, data, version), f"writing {path}"))

    def delete(self, path: str, version: int) -> None:
        self._wait(self._call().delete_async(path, version), f"deleting {path}")

    def ensure(self, path: str) -> None:
        self._wait(self._call().ensure_path_async(path), f"creating {path}")


class Watches:
    """One-shot ZooKeeper watches on the keys the agent reacts to, re-armed for ever.

    A fired watch is re-armed *before* `notify` runs: a change made after the agent's
    next read is then always seen by the new watch. kazoo drops every watch when the
    connection is lost, so `arm()` runs again on each CONNECTED (same or new session).
    Everything here runs on kazoo's callback thread.
    """

    def __init__(
        self,
        client: Any,
        data_paths: Sequence[str],
        child_paths: Sequence[str],
        notify: Callable[[], None],
    ) -> None:
        self._client = client
        self._data_paths = tuple(data_paths)
        self._child_paths = tuple(child_paths)
        self._notify = notify

    def dispatch(self, func: Callable[[], None]) -> None:
        """Run `func` on kazoo's callback thread, after the callbacks already queued."""
        self._client.handler.dispatch_callback(Callback("watch", func, ()))

    def arm(self) -> None:
        for path in self._data_paths:
            self._arm(path)
        for path in self._child_paths:
            self._arm(path)

    def _arm(self, path: str) -> None:
        try:
            if path in self._child_paths:
                self._client.get_children_async(path, watch=self._fired)
            else:
                self._client.exists_async(path, watch=self._fired)
        except KazooException as exc:  # the connection closed; CONNECTED re-arms
            log.debug("dcs.watch.not_armed", path=path, error=repr(exc))

    def _fired(self, event: Any) -> None:
        if event.type == EventType.NONE:
            return  # a connection state change: reported, and re-armed, by the listener
        self._arm(event.path)
        self._notify()
