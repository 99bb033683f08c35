"""Writing files so that a crash leaves the old content or the new, never half of either, and
so that root never writes, reads, chmods or chowns through a path another user can change.

Root (the apply helper, first boot) works in folders the agent's users can also write: the
store's folder, the secrets folder (the API's), Redis's /etc/redis, ClamAV's database folder.
There another user can plant a symbolic link, a hard link or a folder of their own at the name
root is about to use, or swap one in between a check and the use. So, as root:

- a folder is reached by descriptor, one name at a time from /, and a name is used only where
  nobody but root could have put it there: its parent folder is writable by root alone, or it
  is sticky and root (or we) own both the folder and the name, or the name is a folder of
  root's that only root may write (`open_dir`); links elsewhere are refused;
- a file is created under a random name with O_EXCL|O_NOFOLLOW, given its mode and owner on
  the descriptor, and renamed over the old one inside the same folder descriptor
  (`write_atomic`);
- an existing file is opened with O_NOFOLLOW and must be a regular file with one link before
  root changes or reads it (`open_regular`, `read_regular`).

An unprivileged caller (the content filter writing the quarantine) walks paths normally: a
group-mate who misleads it only makes it write where it could write anyway.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from .errors import MailwardenError

# Symbolic links root follows (only where nobody else could have made them) in one path.
MAX_LINKS = 40


class UnsafePath(MailwardenError):
    """Root refused a path another user could have changed (a link, a swapped folder)."""

    code = "unsafe_path"


def _trusted(uid: int) -> bool:
    return uid in (0, os.geteuid())


def others_can_replace(info: os.stat_result) -> bool:
    """Whether a user other than root (and us) may add, rename or remove entries of this
    folder: it belongs to another user, or its group or everyone may write it."""
    return not _trusted(info.st_uid) or bool(info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _stable(folder: os.stat_result, entry: os.stat_result) -> bool:
    """Whether `entry` in `folder` is one root (or we) put there: nobody else can replace
    entries of the folder; or it is sticky (only an entry's owner and the folder's owner may
    rename or remove it) and both belong to us; or the entry is a folder of ours nobody else
    may write. Another user can swap such a folder only for another like it already in the
    same folder (moving a folder to another parent needs write access to it), so root's
    files still land in a folder only root writes (first boot's stamps in the store's
    folder, which every agent user writes)."""
    if not others_can_replace(folder):
        return True
    if folder.st_mode & stat.S_ISVTX and _trusted(folder.st_uid) and _trusted(entry.st_uid):
        return True
    return stat.S_ISDIR(entry.st_mode) and not others_can_replace(entry)


def _refuse(path: str, why: str) -> UnsafePath:
    return UnsafePath(f"refusing {path}: {why}")


def open_dir(path: Path, *, create: bool = False, mode: int = 0o755) -> int:
    """A descriptor (O_RDONLY|O_DIRECTORY) of folder `path`; missing folders are made (with
    `mode`, less the umask) when `create`. As root, refuses (UnsafePath) a path whose
    folders or links another user could have swapped in. The caller closes it."""
    absolute = os.path.normpath(os.path.abspath(path))
    if os.geteuid() != 0:
        if create:
            Path(absolute).mkdir(mode=mode, parents=True, exist_ok=True)
        return os.open(absolute, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    links = 0
    while True:
        fd, rest = _walk(absolute, create, mode)
        if rest is None:
            try:
                return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            finally:
                os.close(fd)
        os.close(fd)
        links += 1
        if links > MAX_LINKS:
            raise _refuse(absolute, "too many symbolic links")
        absolute = rest


def _walk(absolute: str, create: bool, mode: int) -> tuple[int, str | None]:
    """Walk from / by descriptor (O_PATH). Returns the last folder's descriptor and None;
    or, at a symbolic link root may follow, a descriptor to close and the path to walk
    instead (`here` is a real path: every folder in it was opened, none was a link)."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    here = "/"
    parts = [p for p in absolute.split("/") if p]
    try:
        for index, name in enumerate(parts):
            folder = os.fstat(fd)
            try:
                entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, mode, dir_fd=fd)
                entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
            where = os.path.join(here, name)
            if not _stable(folder, entry):
                raise _refuse(where, f"other users may write {here} and could have put "
                              f"{name} there (make the folder root's own, or sticky)")
            if stat.S_ISLNK(entry.st_mode):
                target = os.readlink(name, dir_fd=fd)
                rest = os.path.join(here, target, *parts[index + 1:])
                return fd, os.path.normpath(rest)
            try:
                inner = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _refuse(where, "it changed while root was opening it") from None
                raise
            opened = os.fstat(inner)
            if (opened.st_dev, opened.st_ino) != (entry.st_dev, entry.st_ino):
                os.close(inner)
                raise _refuse(where, "it changed while root was opening it")
            os.close(fd)
            fd, here = inner, where
    except BaseException:
        os.close(fd)
        raise
    return fd, None


def private_dir(path: Path, *, mode: int = 0o750, group: int | None = None) -> int:
    """A descriptor of a folder for root's own files (revisions, staging): made with `mode`
    (and `group`) if missing; refused (UnsafePath) if anyone but root (or us) could have
    put it there, or may add, rename or remove files in it."""
    try:
        fd = open_dir(path)
    except FileNotFoundError:
        parent = open_dir(path.parent, create=True)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path.name, 0o700, dir_fd=parent)
                made = os.open(path.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                               | os.O_CLOEXEC, dir_fd=parent)
                try:
                    if group is not None:
                        os.fchown(made, -1, group)
                    os.fchmod(made, mode)
                finally:
                    os.close(made)
        finally:
            os.close(parent)
        fd = open_dir(path)
    try:
        if others_can_replace(os.fstat(fd)):
            raise _refuse(str(path), "other users may change files in it; it must be root's "
                          "own and not group- or world-writable")
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(folder: int, name: str, where: Path | str = "") -> int | None:
    """Open `name` in folder descriptor `folder` (O_RDONLY|O_NOFOLLOW): None if missing;
    UnsafePath unless it is a regular file with exactly one link (a hard link would let root
    change or read a file elsewhere)."""
    shown = where or name
    if not name or "/" in name or name in (".", ".."):
        raise _refuse(str(shown), "not a plain file name")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC, dir_fd=folder)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(str(shown), "it is a symbolic link") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise _refuse(str(shown), "it is not a regular file")
    if info.st_nlink != 1:
        os.close(fd)
        raise _refuse(str(shown), f"it has {info.st_nlink} hard links")
    return fd


def read_regular(path: Path) -> bytes | None:
    """A file's bytes, or None if it (or its folder) is missing; UnsafePath for a link, a
    hard-linked or a special file."""
    try:
        folder = open_dir(path.parent)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fd = open_regular(folder, path.name, path)
    finally:
        os.close(folder)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def remove(path: Path) -> None:
    """Unlink `path` (never what a link there points to); missing is fine."""
    try:
        folder = open_dir(path.parent)
    except FileNotFoundError:
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.name, dir_fd=folder)
    finally:
        os.close(folder)


def fsync_dir(folder: Path) -> None:
    fd = open_dir(folder)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_in(folder: int, name: str, data: bytes, mode: int = 0o644, *,
             owner: tuple[int, int] | None = None) -> None:
    """Write `name` in folder descriptor `folder`: a new file under a random name (O_EXCL,
    O_NOFOLLOW: nothing planted there is opened), its owner and mode set on the descriptor,
    fsync, then renamed over `name` (a link there is replaced, not followed)."""
    tmp = f".{name}.{secrets.token_hex(8)}.mw-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=folder)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)  # after fchown, which may clear set-id bits
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)
        raise


def write_atomic(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = False,
                 owner: tuple[int, int] | None = None) -> None:
    """Write beside path, fsync, then rename over it; `durable` also fsyncs the folder, so
    the rename itself survives a power cut (the quarantine needs that before its 250).
    `owner` (uid, gid) is set on the new file before it appears."""
    folder = open_dir(path.parent, create=True)
    try:
        write_in(folder, path.name, data, mode, owner=owner)
        if durable:
            os.fsync(folder)
    finally:
        os.close(folder)
