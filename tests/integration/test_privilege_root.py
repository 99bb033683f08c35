"""Root's apply against the agent's own users: each attack is made as the appliance's real
unprivileged user (a child process with its uid and groups), on a tree with the owners and
modes the role gives the appliance (roles/agent/tasks/directories.yml), and root's apply runs
in-process as the apply helper runs it (Operations, with the agent's groups)."""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden.cli import helper_operations
from mailwarden.control.service import NoController
from mailwarden.errors import ConflictError
from mailwarden.files import UnsafePath
from mailwarden.privileged.permissions import adopt_dkim_keys, share_with_agent
from mailwarden.state.revisions import RevisionStore
from mailwarden.store.db import Database
from mailwarden_dev.instance import Sandbox

from ..agent_users import (
    API,
    FILTER,
    GROUP,
    PYTHON,
    SECRETS_GROUP,
    Account,
    apply_role_modes,
    ensure_agent_users,
    run_as,
)
from .conftest import state_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="attacks on root need root")

SYMLINK = "import os, sys; os.symlink(sys.argv[1], sys.argv[2])"
HARDLINK = "import os, sys; os.link(sys.argv[1], sys.argv[2])"
# What the API's user could send: a state whose comment is Python, for a .pth file of root's.
PAYLOAD = "# import os; os.system('id > /tmp/owned')\n"
DKIM = "dkim:\n  sign:\n    - {domain: example.test, selector: s1, key: dkim-example}\n"


@pytest.fixture(scope="module")
def users() -> dict[str, Account]:
    return ensure_agent_users()


@pytest.fixture
def tree() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="mw-root-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


class Appliance:
    """A sandbox tree with the appliance's owners and modes, and the helper's operations."""

    def __init__(self, tree: Path, *, applied: bool = True) -> None:
        self.box = Sandbox(tree / "box")
        self.layout = self.box.layout
        self.box.prepare(self.state() if applied else None)
        apply_role_modes(self.layout.path)
        Database(self.layout.database).close()  # first boot makes the store as root
        self.operations = helper_operations(self.layout, controller=NoController(),
                                            secrets_group=SECRETS_GROUP, agent_group=GROUP)
        self.attacker = tree / "attacker"  # somewhere the attacker may write
        self.attacker.mkdir(mode=0o777)
        self.attacker.chmod(0o1777)
        self.target = tree / "venv" / "lib" / "mailwarden-hook.pth"  # root's, 0755
        self.target.parent.mkdir(parents=True)
        self.target.parent.chmod(0o755)

    def state(self, port: int | None = None, extra: str = "") -> str:
        text = PAYLOAD + state_for(self.box, extra)
        return text if port is None else text.replace(
            f"port: {self.box.sink.port}", f"port: {port}")

    def apply(self, text: str) -> dict[str, object]:
        base = RevisionStore(self.layout.revisions_dir).current()
        return self.operations.handle({"op": "apply", "text": text, "author": "alice",
                                       "comment": "", "base": base})

    @property
    def data(self) -> Path:
        return self.layout.database.parent


def _victim(tree: Path, name: str, mode: int) -> Path:
    victim = tree / name
    victim.write_text("root's own\n")
    victim.chmod(mode)
    return victim


def _unchanged(victim: Path, mode: int) -> None:
    info = victim.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (0, 0, mode)
    assert victim.read_text() == "root's own\n"


def test_roots_folders_cannot_be_replaced_by_the_api_user(
        tree: Path, users: dict[str, Account]) -> None:
    box = Appliance(tree)
    result = run_as(users[API], """
import os, sys
root_data, data, elsewhere = sys.argv[1:]
for attempt in (
    lambda: os.rename(root_data + "/revisions", elsewhere + "/r"),
    lambda: os.rename(root_data + "/staging", elsewhere + "/s"),
    lambda: os.symlink(elsewhere, root_data + "/revisions2"),
    lambda: os.rename(root_data + "/revisions", root_data + "/r"),
):
    try:
        attempt()
        print("done")
    except PermissionError:
        print("refused")
""", str(box.layout.root_data_dir), str(box.data), str(box.attacker))
    assert result.stdout.split() == ["refused"] * 4
    reply = box.apply(box.state(port=2525))
    assert reply["result"]["revision"]["number"] == 2  # type: ignore[index]
    assert (box.layout.revisions_dir / "000002.yaml").read_text().startswith(PAYLOAD)
    revisions = box.layout.revisions_dir.stat()
    assert revisions.st_uid == 0 and revisions.st_mode & 0o7777 == 0o2750
    # The API still reads history (the agent's group), as the API's user.
    run_as(users[API], "import sys; open(sys.argv[1]).read()",
           str(box.layout.revisions_dir / "000002.json"))


def test_links_at_the_old_places_lead_root_nowhere(
        tree: Path, users: dict[str, Account]) -> None:
    box = Appliance(tree)
    # Where revisions and staging used to be, in the folder every agent user writes: the
    # API's user plants its own revisions folder (links named as root's next files) and a
    # staging link to a folder of its own.
    run_as(users[API], """
import os, sys
data, target, elsewhere = sys.argv[1:]
os.mkdir(data + "/revisions")
for name in ("000002.yaml", ".000002.yaml.mw-tmp", "000001.yaml", "000001.json"):
    os.symlink(target, data + "/revisions/" + name)
os.symlink(elsewhere, data + "/staging")
""", str(box.data), str(box.target), str(box.attacker))
    box.apply(box.state(port=2525))
    assert not box.target.exists()
    assert list(box.attacker.iterdir()) == []
    assert RevisionStore(box.layout.revisions_dir).current() == 2
    assert "2525" in box.layout.path("/etc/postfix/mailwarden/transport").read_text()


def test_a_planted_legacy_folder_is_not_migrated(tree: Path, users: dict[str, Account]) -> None:
    # A fresh appliance (no revision yet): the first apply moves an earlier version's
    # revisions, but only root's; the API's planted folder and links stay where they are.
    box = Appliance(tree, applied=False)
    run_as(users[API], """
import os, sys
data, target = sys.argv[1:]
os.mkdir(data + "/revisions")
os.symlink(target, data + "/revisions/000001.yaml")
with open(data + "/revisions/000001.json", "w") as f:
    f.write('{"number": 1, "time": "x", "author": "api", "comment": "", "files": {}}')
""", str(box.data), str(box.target))
    box.apply(box.state())
    store = RevisionStore(box.layout.revisions_dir)
    assert store.numbers() == [1] and store.get(1).author == "alice"
    assert not box.target.exists()
    assert (box.data / "revisions" / "000001.json").exists()  # left alone


def test_roots_own_legacy_revisions_are_moved(tree: Path) -> None:
    box = Appliance(tree, applied=False)
    legacy = box.data / "revisions"
    legacy.mkdir(mode=0o750)
    (legacy / "000001.yaml").write_text(box.state())
    (legacy / "000001.json").write_text(
        '{"number": 1, "time": "2026-01-01T00:00:00+00:00", "author": "old", '
        '"comment": "before the move", "files": {}}')
    # A name that only looks like a revision up to a trailing newline is not one.
    (legacy / "000002.yaml\n").write_text("not a revision\n")
    # The caller's base was read before the move: the moved revision 1 is live now.
    with pytest.raises(ConflictError, match="revision 1 is live"):
        box.apply(box.state(port=2525))
    box.apply(box.state(port=2525))
    store = RevisionStore(box.layout.revisions_dir)
    assert store.numbers() == [1, 2] and store.get(1).comment == "before the move"
    assert store.text(1) == box.state()
    assert not (legacy / "000001.json").exists()
    assert not any("\n" in p.name for p in box.layout.revisions_dir.iterdir())


@pytest.mark.parametrize("folder", ["revisions", "staging"])
def test_a_folder_of_roots_that_others_may_write_is_refused(
        tree: Path, users: dict[str, Account], folder: str) -> None:
    # Should root's folder ever become group-writable (a wrong mode), the API's user swaps
    # the folder for a link to its own: root refuses, and writes nothing anywhere.
    box = Appliance(tree)
    mailwarden = grp.getgrnam(GROUP).gr_gid
    root_data = box.layout.root_data_dir
    os.chown(root_data, 0, mailwarden)
    root_data.chmod(0o2770)
    run_as(users[API], """
import os, sys
root_data, folder, target, elsewhere = sys.argv[1:]
os.rename(root_data + "/" + folder, root_data + "/" + folder + ".old")
os.mkdir(elsewhere + "/new")
os.symlink(target, elsewhere + "/new/000002.yaml")
os.symlink(elsewhere + "/new", root_data + "/" + folder)
""", str(root_data), folder, str(box.target), str(box.attacker))
    before = sorted(p.name for p in (box.attacker / "new").iterdir())
    with pytest.raises(UnsafePath, match="other users may write") as refused:
        box.apply(box.state(port=2525))
    assert refused.value.code == "unsafe_path"
    assert not box.target.exists()
    assert sorted(p.name for p in (box.attacker / "new").iterdir()) == before
    assert "2525" not in box.layout.path("/etc/postfix/mailwarden/transport").read_text()


def test_share_with_agent_leaves_links_in_the_store_folder_alone(
        tree: Path, users: dict[str, Account]) -> None:
    box = Appliance(tree)
    secret = _victim(tree, "shadow", 0o600)
    readable = _victim(tree, "readable", 0o666)  # the kernel lets others hard-link it
    # The store is closed (its last user removed -wal and -shm): the names are free.
    assert not (box.data / "mailwarden.db-wal").exists()
    run_as(users[FILTER], SYMLINK, str(secret), str(box.data / "mailwarden.db-wal"))
    run_as(users[FILTER], HARDLINK, str(readable), str(box.data / "mailwarden.db-shm"))
    share_with_agent(box.layout, GROUP)
    box.apply(box.state(port=2525))  # the helper shares after every apply
    _unchanged(secret, 0o600)
    _unchanged(readable, 0o666)
    store = box.layout.database.stat()  # what should be shared, is
    assert store.st_gid == grp.getgrnam(GROUP).gr_gid and store.st_mode & 0o777 == 0o660


def test_adopt_dkim_keys_refuses_links_and_hard_links(
        tree: Path, users: dict[str, Account]) -> None:
    box = Appliance(tree)
    secret = _victim(tree, "shadow", 0o600)
    readable = _victim(tree, "readable", 0o666)
    secrets = box.layout.secrets_dir
    run_as(users[API], SYMLINK, str(secret), str(secrets / "dkim-example"))
    run_as(users[API], HARDLINK, str(readable), str(secrets / "dkim-hard"))
    with pytest.raises(UnsafePath, match="symbolic link"):
        box.apply(box.state(extra=DKIM))
    with pytest.raises(UnsafePath, match="hard links"):
        adopt_dkim_keys(box.layout, ["dkim-hard"], SECRETS_GROUP)
    _unchanged(secret, 0o600)
    _unchanged(readable, 0o666)
    assert RevisionStore(box.layout.revisions_dir).current() == 1  # nothing applied
    # A real key of the API's is adopted.
    run_as(users[API], "import os, sys; os.remove(sys.argv[1]); "
           "os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600))",
           str(secrets / "dkim-example"))
    assert adopt_dkim_keys(box.layout, ["dkim-example"], SECRETS_GROUP) == [
        secrets / "dkim-example"]
    key = (secrets / "dkim-example").stat()
    assert key.st_gid == grp.getgrnam(SECRETS_GROUP).gr_gid and key.st_mode & 0o777 == 0o640


def test_adopt_dkim_keys_loses_no_race(tree: Path, users: dict[str, Account]) -> None:
    # The API's user swaps its key for a link to root's file and back, as fast as it can,
    # while root adopts it again and again: a check by name then a change by name loses.
    box = Appliance(tree)
    secret = _victim(tree, "shadow", 0o600)
    account = users[API]
    swapper = subprocess.Popen([PYTHON, "-c", """
import os, sys, time
secrets, secret = sys.argv[1:]
key = secrets + "/dkim-race"
end = time.monotonic() + 3
while time.monotonic() < end:
    os.close(os.open(secrets + "/real2", os.O_WRONLY | os.O_CREAT, 0o600))
    os.chown(secrets + "/real2", -1, os.getgid())  # a group root will want to change
    os.rename(secrets + "/real2", key)
    os.symlink(secret, secrets + "/link2")
    os.rename(secrets + "/link2", key)
""", str(box.layout.secrets_dir), str(secret)], user=account.uid, group=account.gid,
        extra_groups=list(account.extra), cwd="/", env={"PATH": "/usr/bin:/bin"})
    outcomes = {"adopted": 0, "refused": 0}
    try:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            try:
                adopt_dkim_keys(box.layout, ["dkim-race"], SECRETS_GROUP)
                outcomes["adopted"] += 1
            except UnsafePath:
                outcomes["refused"] += 1
    finally:
        swapper.wait(timeout=30)
    assert swapper.returncode == 0
    _unchanged(secret, 0o600)
    # Both happened: root saw the attacker's own key and, other times, the link.
    assert outcomes["refused"] > 0 and outcomes["adopted"] > 0, outcomes


def test_a_file_of_roots_named_as_a_dkim_key_is_not_made_readable(
        tree: Path, users: dict[str, Account]) -> None:
    # The SMTP certificate's key is root's, 0600, in the API's secrets folder: a state that
    # names it as a DKIM key must not give it to the secrets group (the API is a member).
    box = Appliance(tree)
    tls_key = box.layout.secrets_dir / "smtp.key"
    tls_key.write_text("-----BEGIN PRIVATE KEY-----\nroot's\n")
    tls_key.chmod(0o600)
    with pytest.raises(UnsafePath, match="belong to the secrets folder's owner"):
        box.apply(box.state(extra=DKIM.replace("dkim-example", "smtp.key")))
    info = tls_key.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, 0, 0o600)
    probe = run_as(users[API], "import sys\ntry:\n    open(sys.argv[1]).read()\n"
                   "    print('read')\nexcept PermissionError:\n    print('denied')",
                   str(tls_key))
    assert probe.stdout.strip() == "denied"
    assert RevisionStore(box.layout.revisions_dir).current() == 1  # nothing applied


def test_the_setup_code_is_the_api_users_without_a_chown_by_path(
        tree: Path, users: dict[str, Account]) -> None:
    # The store's folder is group-writable: a link the API's user plants at the code's name
    # is replaced, not followed, and the new code is the API's from the moment it exists.
    from mailwarden.firstboot import setupcode

    box = Appliance(tree, applied=False)
    victim = _victim(tree, "shadow", 0o600)
    run_as(users[API], SYMLINK, str(victim), str(box.layout.setup_code))
    account = users[API]
    code = setupcode.issue(box.layout.setup_code, (account.uid, account.gid))
    info = os.lstat(box.layout.setup_code)
    assert not os.path.islink(box.layout.setup_code)
    assert (info.st_uid, info.st_mode & 0o777) == (account.uid, 0o600)
    _unchanged(victim, 0o600)
    # The code, then its expiry: the API's user reads both.
    read = run_as(account, "import sys; print(open(sys.argv[1]).read().strip())",
                  str(box.layout.setup_code))
    assert read.stdout.split()[0] == code
    assert float(read.stdout.split()[1]) > time.time()
