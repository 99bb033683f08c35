"""Numbered revisions of the state: who applied what, when and why.

Each applied state is kept as NNNNNN.yaml (the text exactly as submitted, comments and all)
with NNNNNN.json beside it (time, author, comment, hashes of the files it rendered). The
highest number is the live one. Writers hold an exclusive lock and must name the revision
their change was based on; a stale base is a conflict, never a silent merge.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import fcntl
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConflictError, RevisionNotFound
from ..files import write_atomic


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
        """Exclusive writer lock; a second writer waits here, then finds a newer revision."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o750)
        with open(self.folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

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
