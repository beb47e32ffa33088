"""`HaCluster`: a lab with agents and the faults scenarios and benchmarks aim at members."""

from __future__ import annotations

import contextlib
import os
import signal
import time

from pgwarden.lab import Lab, agents
from pgwarden.lab.procs import descendants, is_running
from pgwarden.lab.writer import Report, Writer


class HaCluster:
    """A lab with agents plus the helpers scenarios need."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.synchronous = lab.state.get("synchronous_mode", "off") != "off"

    def sync_members(self, via: str) -> list[str]:
        """The sync key's members as member `via` last read them."""
        _, body = agents.api_get(f"{self.lab.agent_url(via)}/cluster")
        return list(body.get("sync", {}).get("members", []))

    def conninfo(self, name: str) -> str:
        return self.lab.member(name).conninfo(self.lab.credentials)

    def names(self) -> list[str]:
        return [m.name for m in self.lab.members]

    def primary(self) -> str | None:
        return self.lab.primary()

    def replicas(self) -> list[str]:
        return [
            m.name
            for m in self.lab.members
            if agents.api_get(f"{self.lab.agent_url(m.name)}/replica")[0] == 200
        ]

    def wait_primary(self, timeout: float, not_: str | None = None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.primary()
            if found is not None and found != not_:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no primary other than {not_} within {timeout} s")

    def wait_converged(self, timeout: float = 40.0) -> str:
        """Wait until one primary leads, every other member is a replica and, in
        synchronous mode, the sync key names a standby."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            primary = self.primary()
            if primary is not None and self._formed_around(primary):
                return primary
            time.sleep(0.1)
        raise AssertionError(f"the cluster did not converge within {timeout} s")

    def _formed_around(self, primary: str) -> bool:
        if len(self.replicas()) != len(self.names()) - 1:
            return False
        return not self.synchronous or bool(self.sync_members(primary))

    def agent_pid(self, name: str) -> int:
        return self.lab.process(agents.process_name(name)).pid

    def kill_agent(self, name: str, sig: int = signal.SIGKILL) -> None:
        os.kill(self.agent_pid(name), sig)

    def kill_postgres(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Signal the postmaster only (a postgres crash)."""
        pid = self.lab.postmaster_pid(name)
        assert pid is not None, f"{name} has no running postmaster"
        os.kill(pid, sig)
        return pid

    def host_processes(self, name: str) -> list[int]:
        """The agent and everything it started: fence, postmaster, backends."""
        agent = self.agent_pid(name)
        pids = [agent, *descendants(agent)]
        # A postmaster adopted from an earlier agent is not a child of this one.
        postmaster = self.lab.postmaster_pid(name)
        if postmaster is not None and postmaster not in pids:
            pids += [postmaster, *descendants(postmaster)]
        return pids

    def signal_host(self, name: str, sig: int) -> list[int]:
        """Signal every process of the member's "host" at once (SIGKILL: host loss;
        SIGSTOP: a host that stops answering)."""
        pids = self.host_processes(name)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return pids

    def restart_agent(self, name: str) -> None:
        """Start the member's agent again once its previous process is gone."""
        record = self.lab.registry.get(agents.process_name(name))
        deadline = time.monotonic() + 10
        while record is not None and is_running(record) and time.monotonic() < deadline:
            time.sleep(0.05)
        user = self.lab.state.get("agents_user")
        agents.start_agent(self.lab.directory, self.lab.registry, self.lab.lab_id, name, user=user)


def finish(cluster: HaCluster, writer: Writer) -> Report:
    """Stop the writer once the cluster converged, and judge every acknowledged write."""
    primary = cluster.wait_converged()
    time.sleep(0.5)
    writer.stop()
    return writer.check(cluster.conninfo(primary))
