"""The Ansible playbooks: syntax, ansible-lint, and site.yml's configuration step run for
real against localhost, its result checked by the real `pgwarden config check`."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgwarden.config import load_config

REPO = Path(__file__).parents[2]
PLAYBOOKS = REPO / "playbooks"
EXAMPLE_INVENTORY = PLAYBOOKS / "inventory.example"
BIN = Path(sys.executable).parent
PGWARDEN = BIN / "pgwarden"


def run(argv: list[str], tmp_path: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # The venv's ansible, with its state (temp files, collections) kept in this test's
    # directory rather than the user's home.
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env["ANSIBLE_HOME"] = str(tmp_path / "ansible-home")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["NO_COLOR"] = "1"
    return subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


@pytest.mark.parametrize("playbook", ["site", "switchover", "drill", "rolling-restart"])
def test_syntax(tmp_path: Path, playbook: str) -> None:
    result = run(
        [
            str(BIN / "ansible-playbook"),
            "--syntax-check",
            "-i",
            str(EXAMPLE_INVENTORY),
            str(PLAYBOOKS / f"{playbook}.yml"),
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_passes_offline(tmp_path: Path) -> None:
    result = run([str(BIN / "ansible-lint"), "--offline", "--nocolor", "playbooks/"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # The production profile is ansible-lint's strictest.
    assert "'production'" in result.stdout + result.stderr


def render_config(tmp_path: Path, **overrides: object) -> subprocess.CompletedProcess[str]:
    """site.yml's `config` tag on localhost, with the example inventory's variables."""
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "hosts.ini").write_text("[pgwarden]\nlocalhost ansible_connection=local\n")
    shutil.copytree(EXAMPLE_INVENTORY / "group_vars", inventory / "group_vars")
    extra = {
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "ansible_become": False,
        # This host's own answers to what site.yml would set up: a directory instead of
        # /etc/pgwarden, owned by whoever runs the test, and the venv's pgwarden.
        "pgwarden_config_dir": str(tmp_path / "etc"),
        "pgwarden_config_owner": pwd.getpwuid(os.getuid()).pw_name,
        "pgwarden_config_group": grp.getgrgid(os.getgid()).gr_name,
        "pgwarden_bin": str(PGWARDEN),
        "pgwarden_member": "db-7",
        "pgwarden_listen_address": "10.0.1.17",
        **overrides,
    }
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    argv = [
        str(BIN / "ansible-playbook"),
        "-i",
        str(inventory),
        str(PLAYBOOKS / "site.yml"),
        "--tags",
        "config",
        "-e",
        f"@{tmp_path / 'extra.json'}",
    ]
    return run(argv, tmp_path)


def test_site_renders_a_valid_configuration_from_the_inventory(tmp_path: Path) -> None:
    result = render_config(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    config = tmp_path / "etc" / "pgwarden.yml"
    check = subprocess.run(
        [str(PGWARDEN), "config", "check", str(config)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "ok"

    example = yaml.safe_load((EXAMPLE_INVENTORY / "group_vars" / "pgwarden.yml").read_text())
    settings = load_config(config)
    assert settings.cluster == example["pgwarden_cluster"]
    assert settings.member == "db-7"
    assert settings.postgres.listen_address == "10.0.1.17"
    assert settings.api.listen == "10.0.1.17:8008"
    assert list(settings.dcs.hosts) == example["pgwarden_dcs_hosts"]
    assert settings.dcs.ttl == example["pgwarden_dcs"]["ttl"]
    assert settings.ha.synchronous_mode == "on"
    assert settings.storage.model_dump()["bucket"] == example["pgwarden_storage"]["bucket"]
    assert settings.postgres.parameters["shared_buffers"] == "4GB"
    assert settings.postgres.allowed_networks == ("10.0.1.0/24",)
    assert settings.drill.schedule is None
    # Secrets live in files beside the configuration, never in it.
    assert example["pgwarden_replication_password"] not in config.read_text()
    password_file = settings.postgres.replication.password_file
    assert password_file is not None
    assert Path(password_file).read_text().strip() == example["pgwarden_replication_password"]
    assert settings.api.token_file is not None
    for path in (config, Path(password_file), Path(settings.api.token_file)):
        assert path.stat().st_mode & 0o777 == 0o640


def test_site_refuses_a_configuration_pgwarden_refuses(tmp_path: Path) -> None:
    result = render_config(tmp_path, pgwarden_storage={"type": "s3", "bucket": "B"})
    assert result.returncode != 0
    assert "storage.bucket: must be an S3 bucket name" in result.stdout
    assert not (tmp_path / "etc" / "pgwarden.yml").exists()
