"""A ZooKeeper standalone server or 3-node ensemble on loopback, from Debian's package."""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from pgwarden.lab.net import ZOOKEEPER_ADDRESSES, free_port
from pgwarden.lab.procs import LabError, Registry, is_running, log_tail, spawn, stop
from pgwarden.retry import DeadlineExceededError, poll_until

JARS = (
    "/usr/share/java/zookeeper.jar",
    "/usr/share/java/zookeeper-jute.jar",
    "/usr/share/java/slf4j-api.jar",
    "/usr/share/java/slf4j-log4j12.jar",
    "/usr/share/java/log4j-1.2.jar",
)
CONF_DIR = "/etc/zookeeper/conf"  # holds the log4j.properties the CONSOLE logger needs
MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
INSTALL_HINT = "apt-get install -y zookeeper"


@dataclass(frozen=True)
class ZooKeeperNode:
    """One server of the ensemble."""

    myid: int
    host: str
    client_port: int
    quorum_port: int
    election_port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def process_name(self) -> str:
        return f"zookeeper{self.myid}"


def check_installed() -> None:
    """Raise LabError naming the install command when ZooKeeper or java is missing."""
    missing = [jar for jar in JARS if not Path(jar).exists()]
    if shutil.which("java") is None or missing:
        raise LabError(f"ZooKeeper is not installed; run: {INSTALL_HINT}")


def plan(count: int) -> list[ZooKeeperNode]:
    """Pick addresses and free ports for `count` servers (1 or 3)."""
    if count not in (1, 3):
        raise LabError(f"a lab ZooKeeper has 1 or 3 nodes, not {count}")
    nodes = []
    for i in range(count):
        host = ZOOKEEPER_ADDRESSES[i]
        taken: set[int] = set()
        nodes.append(
            ZooKeeperNode(
                i + 1, host, free_port(host, taken), free_port(host, taken), free_port(host, taken)
            )
        )
    return nodes


def srvr(node: ZooKeeperNode, timeout: float = 0.5) -> str | None:
    """The server's `srvr` four-letter-word answer, or None when it does not answer."""
    try:
        with socket.create_connection((node.host, node.client_port), timeout=timeout) as sock:
            sock.sendall(b"srvr")
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
    except OSError:
        return None
    return b"".join(chunks).decode(errors="replace")


def mode(node: ZooKeeperNode) -> str | None:
    """`standalone`, `leader` or `follower` when the node serves clients, else None."""
    answer = srvr(node)
    if not answer:
        return None
    for line in answer.splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return None


def write_config(directory: Path, nodes: list[ZooKeeperNode], node: ZooKeeperNode) -> Path:
    data_dir = directory / f"zk{node.myid}"
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        # Short ticks let tests use short sessions; the explicit bounds keep production-like
        # session timeouts (up to 60 s) available too.
        "tickTime=500",
        "minSessionTimeout=1000",
        "maxSessionTimeout=60000",
        "initLimit=20",
        "syncLimit=10",
        f"dataDir={data_dir}",
        f"clientPort={node.client_port}",
        f"clientPortAddress={node.host}",
        "admin.enableServer=false",
        "4lw.commands.whitelist=*",
        "maxClientCnxns=0",
    ]
    if len(nodes) > 1:
        (data_dir / "myid").write_text(f"{node.myid}\n")
        lines += [f"server.{n.myid}={n.host}:{n.quorum_port}:{n.election_port}" for n in nodes]
    cfg = directory / f"zoo{node.myid}.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def argv(directory: Path, cfg: Path) -> list[str]:
    classpath = ":".join((CONF_DIR, *JARS))
    return [
        "java",
        "-Xms32m",
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        # No /tmp/hsperfdata_<user> files: they outlive a killed JVM.
        "-XX:-UsePerfData",
        f"-Dzookeeper.log.dir={directory}",
        "-Dzookeeper.root.logger=INFO,CONSOLE",
        "-cp",
        classpath,
        MAIN_CLASS,
        str(cfg),
    ]


def start(directory: Path, registry: Registry, nodes: list[ZooKeeperNode]) -> None:
    """Spawn every node; `wait_ready` waits for them."""
    check_installed()
    for node in nodes:
        cfg = write_config(directory, nodes, node)
        spawn(registry, node.process_name, argv(directory, cfg), directory / f"zk{node.myid}.log")


def start_node(directory: Path, registry: Registry, nodes: list[ZooKeeperNode], myid: int) -> None:
    """Start one stopped node of an existing ensemble again, with its data."""
    node = next(n for n in nodes if n.myid == myid)
    cfg = directory / f"zoo{myid}.cfg"
    spawn(registry, node.process_name, argv(directory, cfg), directory / f"zk{myid}.log")


def wait_ready(registry: Registry, nodes: list[ZooKeeperNode], timeout: float = 30.0) -> None:
    """Wait until every node serves clients (and an ensemble has elected a leader)."""

    def ready() -> bool:
        modes = []
        for node in nodes:
            record = registry.get(node.process_name)
            if record is None or not is_running(record):
                raise LabError(
                    f"ZooKeeper node {node.myid} exited during start; its log ends with:\n"
                    + log_tail(record.log if record else "")
                )
            modes.append(mode(node))
        if len(nodes) == 1:
            return modes[0] == "standalone"
        return None not in modes and modes.count("leader") == 1

    try:
        poll_until(ready, timeout)
    except DeadlineExceededError:
        record = registry.get(nodes[0].process_name)
        raise LabError(
            f"ZooKeeper did not become ready within {timeout:g} s; its log ends with:\n"
            + log_tail(record.log if record else "")
        ) from None


def leader(nodes: list[ZooKeeperNode]) -> ZooKeeperNode | None:
    """The node that is leader (or standalone) now."""
    for node in nodes:
        if mode(node) in ("leader", "standalone"):
            return node
    return None


def stop_node(registry: Registry, node: ZooKeeperNode) -> None:
    record = registry.get(node.process_name)
    if record is not None:
        stop(record)
        registry.remove(node.process_name)
