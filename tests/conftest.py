"""Shared test settings and fixtures."""

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci")


@pytest.fixture
def fs_config(tmp_path: Path) -> Path:
    """A configuration of cluster `main` archiving to the file-system store
    `tmp_path/store` (nothing in it reaches the consensus store it names)."""
    path = tmp_path / "pgwarden.yml"
    data = {
        "cluster": "main",
        "member": "db1",
        "dcs": {"hosts": ["127.0.0.1:2181"]},
        "storage": {"type": "fs", "directory": str(tmp_path / "store")},
    }
    path.write_text(yaml.safe_dump(data))
    return path
