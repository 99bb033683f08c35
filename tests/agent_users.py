"""The appliance's unprivileged users, for tests that attack root as one of them.

The users and groups are the role's (roles/agent/defaults/main.yml); they are created here
as system users if this machine lacks them. `run_as` runs a short Python program in a child
process with that user's uid, primary group and supplementary groups, as the unit runs it.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROLE = Path(__file__).resolve().parent.parent / "roles" / "agent"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
GROUP = DEFAULTS["agent_group"]
SECRETS_GROUP = DEFAULTS["agent_secrets_group"]
API = DEFAULTS["agent_api_user"]
FILTER = DEFAULTS["agent_filter_user"]
POLICY = DEFAULTS["agent_policy_user"]
# Supplementary groups each daemon's unit gives it.
EXTRA_GROUPS = {API: [SECRETS_GROUP], FILTER: [SECRETS_GROUP], POLICY: []}
# The child runs the system's Python: the test's interpreter may live where others cannot go.
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    extra: tuple[int, ...]


def ensure_agent_users() -> dict[str, Account]:
    """The agent's groups and users, made if missing (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("creating the appliance's users needs root")
    for group in (GROUP, SECRETS_GROUP):
        try:
            grp.getgrnam(group)
        except KeyError:
            subprocess.run(["groupadd", "--system", group], check=True)
    accounts = {}
    for user, extra in EXTRA_GROUPS.items():
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--gid", GROUP, "--no-create-home",
                            "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                            user], check=True)
        entry = pwd.getpwnam(user)
        accounts[user] = Account(user, entry.pw_uid, entry.pw_gid,
                                 tuple(grp.getgrnam(g).gr_gid for g in extra))
    return accounts


def run_as(account: Account, program: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `program` (Python source; sys.argv[1:] are args) as the account; fails the test
    if it fails, with its output."""
    result = subprocess.run(
        [PYTHON, "-c", program, *args], user=account.uid, group=account.gid,
        extra_groups=list(account.extra), capture_output=True, text=True, timeout=60,
        cwd="/", env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    assert result.returncode == 0, (
        f"as {account.name}: exit {result.returncode}\n{result.stdout}{result.stderr}")
    return result


def apply_role_modes(layout_path: object, skip: tuple[str, ...] = ()) -> None:
    """Give a layout's agent folders the owners, groups and modes the role gives the
    appliance's (roles/agent/tasks/directories.yml), made if missing. `layout_path` maps an
    appliance path into the layout (Layout.path)."""
    tasks = yaml.safe_load((ROLE / "tasks" / "directories.yml").read_text())
    items = next(t["loop"] for t in tasks if "ansible.builtin.file" in t)
    for item in items:
        values = {k: _render(v) for k, v in item.items()}
        if values["path"] in skip:
            continue
        path = layout_path(values["path"])  # type: ignore[operator]
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, pwd.getpwnam(values["owner"]).pw_uid, grp.getgrnam(values["group"]).gr_gid)
        os.chmod(path, int(values["mode"], 8))


def _render(value: str) -> str:
    """The role's "{{ variable }}" with the role's defaults (what the tasks use)."""
    text = str(value)
    while "{{" in text:
        start = text.index("{{")
        end = text.index("}}", start)
        name = text[start + 2:end].strip()
        text = text[:start] + str(DEFAULTS[name]) + text[end + 2:]
    return text
