"""Numbered revisions of the state: who applied what, when and why.

Each applied state is kept as NNNNNN.yaml (the text exactly as submitted, comments and all)
with NNNNNN.json beside it (time, author, comment, hashes of the files it rendered). The
highest number is the live one. Writers hold an exclusive lock and must name the revision
their change was based on; a stale base is a conflict, never a silent merge.

The folder is root's alone (the apply helper writes it; the API reads it through the agent's
group): a writer refuses a folder anyone else may change, and touches it by descriptor.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConflictError, RevisionNotFound
from ..files import UnsafePath, open_dir, open_regular, private_dir, write_atomic, write_in

log = logging.getLogger("mailwarden.revisions")

_REVISION_FILE = re.compile(r"[0-9]{6}\.(yaml|json)")


@dataclass(frozen=True)
class Revision:
    number: int
    time: str  # ISO 8601, UTC
    author: str
    comment: str
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256 as written

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


class RevisionStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive writer lock; a second writer waits here, then finds a newer revision.
        Refuses (UnsafePath) a folder that anyone but its writer may change."""
        folder = private_dir(self.folder, mode=0o750)
        try:
            fd = os.open(".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o640, dir_fd=folder)
        finally:
            os.close(folder)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def numbers(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(p.stem) for p in self.folder.glob("[0-9]*.json"))

    def current(self) -> int | None:
        numbers = self.numbers()
        return numbers[-1] if numbers else None

    def get(self, number: int) -> Revision:
        path = self.folder / f"{number:06d}.json"
        if not path.exists():
            raise RevisionNotFound(f"there is no revision {number}")
        return Revision(**json.loads(path.read_text()))

    def text(self, number: int) -> str:
        path = self.folder / f"{number:06d}.yaml"
        if not path.exists():
            raise RevisionNotFound(f"there is no revision {number}")
        return path.read_text(encoding="utf-8")

    def history(self) -> list[Revision]:
        return [self.get(n) for n in self.numbers()]

    def check_base(self, base: int | None) -> None:
        """Refuse a change based on anything but the live revision (call under lock)."""
        current = self.current()
        if base == current:
            return
        if base is None:
            raise ConflictError(base, current or 0,
                                f"the state changed meanwhile: revision {current} is live; "
                                "start from it")
        changes = self.diff(base, current) if current and base in self.numbers() else ""
        raise ConflictError(
            base, current or 0,
            f"your change is based on revision {base} but revision {current} is live; "
            f"review what changed and try again\n{changes}".rstrip(),
        )

    def record(self, text: str, author: str, comment: str, files: dict[str, str]) -> Revision:
        """Store the next revision (call under lock, after the state went live)."""
        number = (self.current() or 0) + 1
        revision = Revision(
            number=number,
            time=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            author=author,
            comment=comment,
            files=files,
        )
        write_atomic(self.folder / f"{number:06d}.yaml", text.encode(), 0o640)
        # The .json appears last: a revision without it does not exist.
        write_atomic(self.folder / f"{number:06d}.json", revision.to_json().encode(), 0o640)
        return revision

    def diff(self, a: int, b: int) -> str:
        lines = difflib.unified_diff(
            self.text(a).splitlines(keepends=True),
            self.text(b).splitlines(keepends=True),
            fromfile=f"revision {a}",
            tofile=f"revision {b}",
        )
        return "".join(lines)


def migrate_revisions(old: Path, new: Path) -> int:
    """Move the revisions an earlier version kept in `old` (the store's folder, which the
    agent's users may write) to `new`, once: only while `new` holds none. Only what root
    wrote crosses: a real folder (no link) owned by root, regular single-link files owned
    by root with revision names, copied by descriptor. Anything else is left where it is
    and logged: another user can put things at `old`, and must not be able to stop an
    apply by doing so. Returns how many files were moved."""
    if RevisionStore(new).numbers():
        return 0
    try:
        parent = open_dir(old.parent)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    try:
        source = os.open(old.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=parent)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("revisions not moved from %s: not a folder (%s)", old, exc.strerror)
        return 0
    finally:
        os.close(parent)
    try:
        owner = os.fstat(source).st_uid
        if owner not in (0, os.geteuid()):
            log.warning("revisions not moved from %s: it belongs to uid %d", old, owner)
            return 0
        names = sorted((n for n in os.listdir(source) if _REVISION_FILE.fullmatch(n)),
                       key=lambda n: (n[:6], n.endswith(".json")))  # .json last: it commits
        files: dict[str, bytes] = {}
        for name in names:
            try:
                fd = open_regular(source, name, old / name)
            except UnsafePath as exc:
                log.warning("revision file not moved: %s", exc.message)
                continue
            if fd is None:
                continue
            with os.fdopen(fd, "rb") as handle:
                if os.fstat(handle.fileno()).st_uid != owner:
                    log.warning("revision file not moved: %s is not root's", old / name)
                    continue
                files[name] = handle.read()
        if not files:
            return 0
        target = private_dir(new, mode=0o750)
        try:
            for name, data in files.items():
                write_in(target, name, data, 0o640)
            os.fsync(target)
        finally:
            os.close(target)
        for name in files:
            os.unlink(name, dir_fd=source)
    finally:
        os.close(source)
    log.info("moved %d revision files from %s to %s", len(files), old, new)
    return len(files)
