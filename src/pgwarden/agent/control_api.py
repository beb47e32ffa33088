"""Handlers of the agent's control endpoints (POST /switchover, /failover, /restart,
/reload, /reinitialize, /backup, /drill). Each takes the JSON body and returns (HTTP
status, JSON body)."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pgwarden.agent.drills import drill_handler
from pgwarden.cli.dynamic_cmd import update_config
from pgwarden.control import Refused, plan_failover, plan_switchover
from pgwarden.dcs.base import StoreError
from pgwarden.dynamic_config import plain, validate
from pgwarden.errors import ConfigError, PgwardenError
from pgwarden.model import DynamicConfig
from pgwarden.peers import members_now
from pgwarden.postgres import sql

if TYPE_CHECKING:
    from pgwarden.agent.backups import Source
    from pgwarden.agent.main import Agent

Handler = Callable[[dict[str, Any]], tuple[int, Any]]


def _at(value: Any) -> float:
    if value is None:
        return time.time()
    moment = datetime.datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        raise Refused(f"at {value!r} has no time zone")
    return moment.timestamp()


def _patch_config(agent: Agent) -> Handler:
    def patch_config(body: dict[str, Any]) -> tuple[int, Any]:
        """JSON merge patch of the dynamic configuration: keys replace, null resets,
        `parameters` merges (a null parameter is removed). Compare-and-set."""

        def change(config: DynamicConfig) -> DynamicConfig:
            data = plain(config)
            for key, value in body.items():
                if key == "parameters" and isinstance(value, dict):
                    for name, text in value.items():
                        if text is None:
                            data["parameters"].pop(name, None)
                        else:
                            data["parameters"][name] = text
                elif value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
            return validate(data)

        try:
            update = update_config(agent.store, change, "applying PATCH /config")
        except ConfigError as exc:
            return 400, {"error": "the dynamic configuration is not valid", "problems": exc.lines()}
        except PgwardenError as exc:
            return 409, {"error": str(exc)}
        agent.wake()
        return 200, update.to_json()

    return patch_config


def handlers(agent: Agent) -> dict[str, Handler]:
    """The control endpoints of `agent`."""

    def request(kind: str, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            cluster = agent.store.read()
            now = members_now(cluster)
            if kind == "switchover":
                plan = plan_switchover(
                    cluster, now, to=body.get("to"), at=_at(body.get("at")),
                    force=bool(body.get("force", False)),
                )  # fmt: skip
            else:
                if not body.get("to"):
                    return 400, {"error": 'a failover needs "to": the member to promote'}
                plan = plan_failover(
                    cluster, now, to=str(body["to"]), at=time.time(),
                    allow_data_loss=bool(body.get("allow_data_loss", False)),
                    force=bool(body.get("force", False)),
                )  # fmt: skip
            if not agent.store.set_failover(plan.request, -1):
                return 409, {"error": f"another {kind} was requested at the same moment"}
        except (Refused, ValueError) as exc:
            return 409, {"error": str(exc)}
        except StoreError as exc:
            return 503, {"error": str(exc)}
        agent.wake()
        return 202, plan.to_json()

    def restart(body: dict[str, Any]) -> tuple[int, Any]:
        if body.get("pending"):
            try:
                with sql.connect(agent.instance.spec) as conn:
                    row = conn.execute(
                        "SELECT count(*) FROM pg_settings WHERE pending_restart"
                    ).fetchone()
            except PgwardenError as exc:
                return 409, {"error": f"cannot tell whether a restart is pending: {exc}"}
            if not row or not row[0]:
                return 200, {"result": "no restart pending"}
        agent.loop.operator_request = "restart"
        agent.wake()
        return 202, {"result": "restart scheduled"}

    def reload(_body: dict[str, Any]) -> tuple[int, Any]:
        try:
            sql.reload(agent.instance.spec)
        except PgwardenError as exc:
            return 409, {"error": str(exc)}
        return 200, {"result": "configuration reloaded"}

    def reinitialize(_body: dict[str, Any]) -> tuple[int, Any]:
        if agent.keeper.snapshot().holds:
            return 409, {
                "error": f"{agent.me} is the primary; switch over first, then reinitialize it"
            }
        agent.loop.operator_request = "reinit"
        agent.wake()
        return 202, {"result": "reinitialization scheduled"}

    def backup(body: dict[str, Any]) -> tuple[int, Any]:
        kind = body.get("type", "full")
        if kind not in ("full", "incr"):
            return 400, {"error": f'"type" must be "full" or "incr", not {kind!r}'}
        scheduler = agent.backups
        if scheduler is None:
            return 409, {"error": f"{agent.me} runs without a configuration file to back up with"}
        source: Source = "primary" if agent.keeper.snapshot().holds else "standby"
        if not scheduler.start_now(kind, source):
            return 409, {"error": f"a backup is already running on {agent.me}"}
        return 202, {"result": f"{kind} backup started on {agent.me} from its {source}"}

    return {
        "PATCH /config": _patch_config(agent),
        "/backup": backup,
        "/drill": drill_handler(agent),
        "/switchover": lambda body: request("switchover", body),
        "/failover": lambda body: request("failover", body),
        "/restart": restart,
        "/reload": reload,
        "/reinitialize": reinitialize,
    }
