"""deploy/prometheus/alerts.yml: valid for Prometheus, each alert proven by
`promtool test rules`, and only metric names the agent really exposes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from metrics_samples import all_sample_names, full_status
from pgwarden.agent.metrics import registry_for

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
RUNBOOK_BASE = "https://github.com/pgwarden/pgwarden/blob/main/"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing: run scripts/install-system-packages.sh (make install)")
    return subprocess.run(
        [tool, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=RULES.parent,
    )


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_each_alert_fires_on_its_series_and_only_then() -> None:
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    cases = yaml.safe_load(RULES_TEST.read_text())["tests"]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown silent"


def test_alert_expressions_use_only_metrics_the_agent_exposes() -> None:
    exposed = all_sample_names()
    for rule in alerts():
        used = set(re.findall(r"\bpgwarden_[a-z_]+", rule["expr"]))
        assert used, rule["alert"]
        assert used <= exposed, (rule["alert"], used - exposed)


def test_every_alert_has_a_severity_a_wait_and_a_runbook_that_exists() -> None:
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert re.fullmatch(r"\d+[smhd]", rule["for"]), name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        url = annotations["runbook_url"]
        assert url.startswith(RUNBOOK_BASE), name
        assert (ROOT / url.removeprefix(RUNBOOK_BASE)).is_file(), (name, url)


def test_docs_metrics_lists_every_metric_and_alert() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `(pgwarden_[a-z_]+)`", text, re.M))
    assert documented == all_sample_names()
    listed = set(re.findall(r"^\| `(Pgwarden[A-Za-z]+)`", text, re.M))
    assert listed == {rule["alert"] for rule in alerts()}


@pytest.mark.parametrize("role", ["primary", "replica"])
def test_promtool_lints_the_exposition_clean(role: str) -> None:
    status = full_status(role=role, holds_lease=role == "primary", lease_seconds_left=2.0)
    result = promtool(
        "check", "metrics", stdin=generate_latest(registry_for(lambda: status)).decode()
    )
    assert result.returncode == 0, result.stdout + result.stderr
