"""Local sandbox: ZooKeeper, an S3 endpoint and PostgreSQL on loopback.

The demo, the tests and the benchmarks all stand up clusters through this package.
"""

from pgwarden.lab.lab import Lab, LabSpec, scratch_directory
from pgwarden.lab.procs import LabError

__all__ = ["Lab", "LabError", "LabSpec", "scratch_directory"]
