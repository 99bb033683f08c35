"""The hash bookkeeping of image/build-wheelhouse.sh (standard library only: it runs in the
image build's virtualenv).

  split LOCK HOSTDIR OUT DESTDIR   the wheels in HOSTDIR that are not on PyPI (built here from a
                                   hash-checked sdist) go to DESTDIR; OUT is LOCK without them,
                                   for the download of everything else
  manifest WHEELDIR                writes WHEELDIR/requirements.lock: every wheel there, pinned
                                   with its own hash, for pip install --require-hashes --no-index
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
from pathlib import Path

MANIFEST = "requirements.lock"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _entries(lock: Path) -> dict[str, tuple[str, set[str]]]:
    """Canonical name -> (the requirement line as written, its allowed hashes)."""
    text = lock.read_text(encoding="utf-8").replace("\\\n", " ")
    out: dict[str, tuple[str, set[str]]] = {}
    for line in text.splitlines():
        requirement = line.split("#", 1)[0].strip()
        if not requirement or requirement.startswith("-"):
            continue
        name = re.split(r"[=<>!~; \[]", requirement, maxsplit=1)[0]
        out[_canonical(name)] = (requirement, set(re.findall(r"--hash=sha256:([0-9a-f]{64})",
                                                             requirement)))
    return out


def _wheel_name(path: Path) -> tuple[str, str]:
    # name-version(-build)?-python-abi-platform.whl, the name with - escaped as _
    name, version = path.name.split("-")[:2]
    return name, version


def split(lock: Path, host: Path, out: Path, dest: Path) -> None:
    entries = _entries(lock)
    local: set[str] = set()
    # Only pure wheels: a binary one built here is for this host's Python, not the target's.
    for wheel in sorted(host.glob("*-none-any.whl")):
        name = _canonical(_wheel_name(wheel)[0])
        if name not in entries:
            continue  # a build requirement, not part of the agent
        if _sha256(wheel) not in entries[name][1]:
            # pip wheel verified the sdist against the lock before building this one.
            local.add(name)
            shutil.copy2(wheel, dest / wheel.name)
            print(f"built here from its sdist: {wheel.name}", file=sys.stderr)
    out.write_text("".join(f"{line}\n" for name, (line, _) in sorted(entries.items())
                           if name not in local), encoding="utf-8")


def manifest(folder: Path) -> None:
    lines = []
    for wheel in sorted(folder.glob("*.whl")):
        name, version = _wheel_name(wheel)
        lines.append(f"{_canonical(name)}=={version} --hash=sha256:{_sha256(wheel)}\n")
    (folder / MANIFEST).write_text("".join(lines), encoding="utf-8")


def main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[0] == "split":
        split(*(Path(a) for a in argv[1:]))
        return 0
    if len(argv) == 2 and argv[0] == "manifest":
        manifest(Path(argv[1]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
