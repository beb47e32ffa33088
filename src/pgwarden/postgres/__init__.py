"""Control of the local PostgreSQL instance: managed config files, lifecycle, SQL probes.

`conf` renders files (pure), `instance` runs PostgreSQL's programs, `sql` talks to a
running member over TCP as the superuser.
"""

from pgwarden.postgres.conf import Endpoint, InstanceSpec, slot_name, sync_standby_names
from pgwarden.postgres.instance import Instance, PgError, RewindError
from pgwarden.postgres.sql import Observation, ReplicaStat, SqlError

__all__ = [
    "Endpoint",
    "Instance",
    "InstanceSpec",
    "Observation",
    "PgError",
    "ReplicaStat",
    "RewindError",
    "SqlError",
    "slot_name",
    "sync_standby_names",
]
