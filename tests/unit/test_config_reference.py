"""docs/configuration-reference.md is generated from the settings model and kept in sync."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pgwarden import config_reference
from pgwarden.config import effective_config, load_config

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "configuration-reference.md"
COMMAND = "python -m pgwarden.config_reference --write docs/configuration-reference.md"


def test_the_committed_reference_is_up_to_date() -> None:
    assert REFERENCE.read_text() == config_reference.render(), f"run `{COMMAND}`"


def test_every_setting_has_a_description_and_every_type_an_explanation() -> None:
    assert config_reference.missing_descriptions() == [], "add a comment above the field"
    assert config_reference.unknown_types() == set(), "explain the type in TYPES"


def dotted(data: Any, prefix: str = "") -> set[str]:
    """Every setting path in an effective configuration (list items as `[]`)."""
    if isinstance(data, dict) and not prefix.endswith("parameters"):
        found = {prefix} if prefix else set()
        for key, value in data.items():
            found |= dotted(value, f"{prefix}.{key}" if prefix else key)
        return found
    if isinstance(data, list) and data and isinstance(data[0], dict):
        items = {p for item in data for p in dotted(item, f"{prefix}[]")}
        return {prefix} | (items - {f"{prefix}[]"})
    return {prefix}


def test_the_reference_covers_every_setting_of_the_full_example() -> None:
    settings = load_config(ROOT / "examples" / "pgwarden.yml")
    paths = {row.path for section in config_reference.sections() for row in section.rows}
    assert dotted(effective_config(settings)) <= paths


def test_sections_types_and_defaults() -> None:
    rows = {row.path: row for s in config_reference.sections() for row in s.rows}
    assert rows["cluster"].default == "required"
    assert rows["dcs.ttl"].type == "Seconds (>= 2)"
    assert rows["dcs.ttl"].default == "`4`"
    assert rows["postgres"].default == "all defaults"
    assert rows["backup.retention"].default == '`{"full_count": 7}`'
    assert rows["ha.synchronous_mode"].type == '"off" | "on" | "strict"'
    assert rows["backup.schedule"].type == "Cron | null"
    assert rows["drill.checks"].type == "list of sections"
    assert rows["drill.checks[].sql"].default == "required"
    assert rows["storage.bucket"].type == "BucketName"
    assert rows["storage.directory"].type == "AbsolutePath"
    assert rows["postgres.superuser.username"].default == '`"postgres"`'
    assert rows["postgres.replication.username"].default == '`"replicator"`'
    # A subclass that only changes a default keeps its parent's description.
    assert rows["postgres.replication.username"].description
    text = config_reference.render()
    assert "## storage (type: s3)" in text and "## storage (type: fs)" in text
    assert "None" not in text.split("## Types")[0].replace("`None`", "")
