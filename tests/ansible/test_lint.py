"""ansible-lint (production profile, offline, from .ansible-lint) and --syntax-check
for every playbook."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .fleet import ANSIBLE_DIR, PROJECT, VENV_BIN, syntax_check

PLAYBOOKS = ["site.yml", "provision.yml", "rollout.yml", "decommission.yml"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
            "NO_COLOR": "1",
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    return env


def _need(tool: str) -> Path:
    path = VENV_BIN / tool
    if not path.exists():
        pytest.skip(f"{tool} is not in the venv: pip install -e '.[dev]'")
    return path


def test_every_playbook_is_there() -> None:
    assert sorted(p.name for p in ANSIBLE_DIR.glob("*.yml")) == sorted(PLAYBOOKS)


def test_syntax_check_passes_for_every_playbook(tmp_path: Path) -> None:
    _need("ansible-playbook")
    done = syntax_check(PLAYBOOKS, _env(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    for playbook in PLAYBOOKS:
        assert f"playbook: {playbook}" in done.stdout


@pytest.mark.slow
def test_ansible_lint_passes_with_the_production_profile_offline(tmp_path: Path) -> None:
    lint = _need("ansible-lint")
    config = (PROJECT / ".ansible-lint").read_text()
    assert "profile: production" in config and "offline: true" in config
    done = subprocess.run(
        [
            str(lint),
            "--offline",
            "--profile",
            "production",
            "-c",
            str(PROJECT / ".ansible-lint"),
            "--nocolor",
        ],
        cwd=PROJECT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Profile 'production' was required, and it passed" in output, output
    assert "0 failure(s), 0 warning(s)" in output, output


@pytest.mark.slow
def test_ansible_lint_catches_a_broken_role(tmp_path: Path) -> None:
    """The lint test can fail: a copy of the roles with a task that breaks the rules."""
    lint = _need("ansible-lint")
    import shutil

    project = tmp_path / "project"
    shutil.copytree(ANSIBLE_DIR, project / "ansible", ignore=shutil.ignore_patterns("inventories"))
    shutil.copy(PROJECT / ".ansible-lint", project / ".ansible-lint")
    tasks = project / "ansible/roles/base/tasks/main.yml"
    tasks.write_text(tasks.read_text() + "\n- shell: echo hello | cat\n")
    done = subprocess.run(
        [str(lint), "--offline", "--nocolor"],
        cwd=project,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "fqcn" in output and "name[missing]" in output, output
