"""PURE. Synchronous standby management on the leader.

Invariant: every member listed in the `sync` key holds every commit the primary has
acknowledged, so promoting any of them loses nothing. The leader moves
`synchronous_standby_names` (ssn) and the key in an order that keeps it true:

- adding standbys D to key K: first require K and D together in ssn; once every member of
  D is synchronous and has flushed past the WAL position read after the new setting was
  seen in effect (`LocalState.sync_confirmed_lsn`), write the key as D; then drop K's
  leavers from ssn.
- removing only: write the key first (ssn still requires the larger set), then ssn.
- no candidate: mode `on` empties the key first (nobody may promote), then ssn, and
  replication degrades to asynchronous; mode `strict` never degrades: writes wait.
- mode `off`: empty the key first, then ssn.
"""

from __future__ import annotations

from collections.abc import Mapping

from pgwarden.ha.actions import Action, SetSyncKey, SetSyncStandbys
from pgwarden.ha.view import STAR, ClusterView, LocalState
from pgwarden.model import MemberInfo, SyncMode


def desired_standbys(
    local: LocalState,
    members: Mapping[str, MemberInfo],
    count: int,
    current: frozenset[str] = frozenset(),
) -> frozenset[str]:
    """The `count` streaming standbys that may be synchronous: the current ones first
    (so that positions that change under load do not move the set back and forth),
    then the most advanced."""
    candidates = [
        s
        for s in local.standbys
        if s.state == "streaming" and s.name in members and not members[s.name].tags.nosync
    ]
    candidates.sort(key=lambda s: (s.name not in current, -(s.flush_lsn or 0), s.name))
    return frozenset(s.name for s in candidates[: max(count, 0)])


def plan_sync(view: ClusterView) -> tuple[list[Action], str]:
    """The next step towards the desired synchronous standbys, and a phrase saying why."""
    cluster, local = view.cluster, view.local
    mode = cluster.config.synchronous_mode
    sync = cluster.sync
    current = local.sync_standby_names
    if mode is SyncMode.OFF:
        # Removing only: the key first, while ssn still requires everyone it lists.
        if sync.version != -1 and (sync.members or sync.leader != view.me):
            return [SetSyncKey(frozenset(), sync.version)], "synchronous mode is off"
        if current:
            return [SetSyncStandbys(frozenset())], "synchronous mode is off"
        return [], ""
    if sync.leader != view.me:
        # A key written by a previous leader: claim it with nobody promotable first.
        return [SetSyncKey(frozenset(), sync.version)], "claiming the sync key"
    key = sync.members
    wanted = desired_standbys(
        local, cluster.members, cluster.config.synchronous_node_count, sync.members
    )
    if not wanted:
        if mode is SyncMode.STRICT:
            if not current:
                return [SetSyncStandbys(frozenset({STAR}))], "strict mode requires a standby"
            return [], "strict mode: no synchronous standby available, writes wait"
        if key:
            return [SetSyncKey(frozenset(), sync.version)], "no synchronous standby candidate"
        if current:
            return [SetSyncStandbys(frozenset())], "degrading to asynchronous replication"
        return [], "no synchronous standby available"
    if wanted <= key:
        if key != wanted:
            return [SetSyncKey(wanted, sync.version)], "dropping standbys from the sync key"
        if current != wanted:
            return [SetSyncStandbys(wanted)], "requiring only the synchronous standbys"
        return [], ""
    union = key | wanted
    if current not in (union, wanted):
        return [SetSyncStandbys(union)], "requiring new synchronous standbys before listing them"
    # Commits acknowledged before the new setting took effect may be on the old key's
    # members only; the new ones hold them once they flushed past the position read
    # after the setting was seen in effect.
    by_name = {s.name: s for s in local.standbys}
    position = local.sync_confirmed_lsn
    caught_up = position is not None and all(
        name in by_name
        and by_name[name].sync_state in ("sync", "quorum")
        and (by_name[name].flush_lsn or 0) >= position
        for name in wanted
    )
    if caught_up:
        return [SetSyncKey(wanted, sync.version)], "new synchronous standbys caught up"
    return [], "waiting for new synchronous standbys to catch up"
