"""Root's file writes against an unprivileged user who plants links and swaps folders: the
attacker's steps run as the appliance's real users (a child process with their uid)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden import files
from mailwarden.files import UnsafePath, open_dir, private_dir, read_regular, write_atomic

from ..agent_users import API, FILTER, GROUP, Account, ensure_agent_users, run_as

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="attacks on root need root")

SYMLINK = "import os, sys; os.symlink(sys.argv[1], sys.argv[2])"
RENAME = "import os, sys; os.rename(sys.argv[1], sys.argv[2])"


@pytest.fixture(scope="module")
def users() -> dict[str, Account]:
    return ensure_agent_users()


@pytest.fixture
def tree() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="mw-files-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _shared(path: Path, mode: int) -> Path:
    """A folder of root's in the agent's group, like the store's."""
    import grp

    path.mkdir()
    os.chown(path, 0, grp.getgrnam(GROUP).gr_gid)
    path.chmod(mode)
    return path


def _victim(tree: Path) -> Path:
    victim = tree / "victim.pth"
    victim.write_text("root's own\n")
    victim.chmod(0o600)
    return victim


def test_a_link_planted_at_the_temporary_name_is_never_opened(
        tree: Path, users: dict[str, Account], monkeypatch: pytest.MonkeyPatch) -> None:
    shared = _shared(tree / "shared", 0o3770)
    victim = _victim(tree)
    # The attacker guessed the random part (here: we tell it): O_EXCL|O_NOFOLLOW refuses.
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: "guessed")
    run_as(users[FILTER], SYMLINK, str(victim), str(shared / ".state.yaml.guessed.mw-tmp"))
    run_as(users[FILTER], SYMLINK, str(victim), str(shared / ".state.yaml.mw-tmp"))
    with pytest.raises(FileExistsError):
        write_atomic(shared / "state.yaml", b"import os  # chosen by the attacker\n")
    assert victim.read_text() == "root's own\n"
    assert not (shared / "state.yaml").exists()


def test_a_link_planted_at_the_final_name_is_replaced_not_followed(
        tree: Path, users: dict[str, Account]) -> None:
    shared = _shared(tree / "shared", 0o3770)
    victim = _victim(tree)
    run_as(users[FILTER], SYMLINK, str(victim), str(shared / "setup-code"))
    write_atomic(shared / "setup-code", b"new\n", 0o600)
    assert victim.read_text() == "root's own\n" and victim.stat().st_mode & 0o777 == 0o600
    written = (shared / "setup-code").lstat()
    assert stat.S_ISREG(written.st_mode) and written.st_uid == 0
    assert written.st_mode & 0o777 == 0o600
    assert not [p for p in shared.iterdir() if p.name.endswith(".mw-tmp")]


def test_a_folder_another_user_may_swap_is_refused(
        tree: Path, users: dict[str, Account]) -> None:
    # Group-writable and not sticky (the store's folder before it became sticky): the API's
    # user renames root's folder away and puts a link to wherever it likes in its place.
    shared = _shared(tree / "shared", 0o2770)
    (shared / "revisions").mkdir()
    elsewhere = tree / "elsewhere"
    elsewhere.mkdir()
    run_as(users[API], RENAME, str(shared / "revisions"), str(shared / "gone"))
    run_as(users[API], SYMLINK, str(elsewhere), str(shared / "revisions"))
    with pytest.raises(UnsafePath, match="other users may write"):
        write_atomic(shared / "revisions" / "000001.yaml", b"text\n")
    assert list(elsewhere.iterdir()) == []
    # A folder of its own in the place of root's: refused too.
    run_as(users[API], "import os, sys; os.remove(sys.argv[1]); os.mkdir(sys.argv[1])",
           str(shared / "revisions"))
    with pytest.raises(UnsafePath, match="other users may write"):
        write_atomic(shared / "revisions" / "000001.yaml", b"text\n")
    assert list((shared / "revisions").iterdir()) == []
    # Root's own folder, nobody else may write, in a folder others write: root writes there
    # (another user could only swap it for another such folder of root's beside it).
    (shared / "firstboot").mkdir(mode=0o750)
    write_atomic(shared / "firstboot" / "complete", b"done\n")
    assert (shared / "firstboot" / "complete").read_text() == "done\n"
    # Root's own folder that others may write is refused for root's own files too.
    with pytest.raises(UnsafePath, match="other users may change"):
        os.close(private_dir(shared))


def test_sticky_folders_keep_roots_entries_roots(tree: Path, users: dict[str, Account]) -> None:
    shared = _shared(tree / "shared", 0o3770)
    (shared / "firstboot").mkdir(mode=0o750)
    result = run_as(users[API], """
import os, sys
try:
    os.rename(sys.argv[1], sys.argv[2])
except PermissionError:
    print("refused")
""", str(shared / "firstboot"), str(shared / "mine"))
    assert result.stdout.strip() == "refused"
    write_atomic(shared / "firstboot" / "complete", b"done\n")
    assert (shared / "firstboot" / "complete").read_text() == "done\n"
    # A folder the attacker made in the sticky folder is theirs: root does not write into it.
    run_as(users[API], "import os, sys; os.mkdir(sys.argv[1])", str(shared / "staging"))
    with pytest.raises(UnsafePath):
        write_atomic(shared / "staging" / "x", b"x")


def test_links_root_made_in_its_own_folders_are_followed(tree: Path) -> None:
    (tree / "real").mkdir()
    (tree / "link").symlink_to("real")
    write_atomic(tree / "link" / "file", b"through a link of root's\n")
    assert (tree / "real" / "file").read_bytes() == b"through a link of root's\n"
    fd = open_dir(tree / "link")
    try:
        assert os.fstat(fd).st_ino == (tree / "real").stat().st_ino
    finally:
        os.close(fd)


def test_reading_refuses_links_and_hard_links(tree: Path, users: dict[str, Account]) -> None:
    shared = _shared(tree / "shared", 0o3770)
    victim = _victim(tree)
    run_as(users[FILTER], SYMLINK, str(victim), str(shared / "redis.conf"))
    with pytest.raises(UnsafePath, match="symbolic link"):
        read_regular(shared / "redis.conf")
    readable = tree / "readable"
    readable.write_text("x")
    readable.chmod(0o666)  # the kernel lets a user hard-link what it may read and write
    run_as(users[FILTER], "import os, sys; os.link(sys.argv[1], sys.argv[2])",
           str(readable), str(shared / "main.cf"))
    with pytest.raises(UnsafePath, match="hard links"):
        read_regular(shared / "main.cf")
    assert read_regular(shared / "missing") is None
