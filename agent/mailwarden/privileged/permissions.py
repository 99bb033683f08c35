"""Host ownership and modes root sets after a change, so the agent's users can read it.

Every file is opened without following links, checked to be a regular file with one link,
and changed by descriptor: the folders involved are writable by unprivileged users, who may
put a link where a file was expected, or swap one in between a check and a change by name.
"""

from __future__ import annotations

import grp
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from ..files import UnsafePath, open_dir, open_regular
from ..layout import Layout

log = logging.getLogger("mailwarden.apply-helper")

# Secrets the content filter must read (DKIM keys) are shared through this group.
SECRETS_GROUP = "mailwarden-secrets"
# The agent's daemons share the store and the state through this group.
AGENT_GROUP = "mailwarden"


def group_or_none(name: str) -> str | None:
    """The group's name if this host has it (the appliance); None elsewhere."""
    try:
        grp.getgrnam(name)
    except KeyError:
        return None
    return name


def adopt_dkim_keys(layout: Layout, names: Iterable[str], group: str) -> list[Path]:
    """Make the DKIM keys a state signs with readable by the content filter (group, 0640).

    The API writes a new key 0600 as its own user; the filter, another user, signs with it.
    The change happens here, as root, when a state that names the key is applied. The
    secrets folder is the API's: a name there may be a link or a hard link to any file, or
    become one between a check and a change by name. So each key is opened without
    following links, must be a regular file with one link, and is changed by descriptor;
    anything else refuses the apply (UnsafePath). Only keys of the folder's owner (the API's
    user) are adopted: naming a file of root's there (the TLS key Postfix reads) would
    otherwise make it readable to the whole secrets group, the API included."""
    gid = grp.getgrnam(group).gr_gid
    try:
        folder = open_dir(layout.secrets_dir)
    except FileNotFoundError:
        return []  # apply_state names the missing secrets
    adopted = []
    try:
        owner = os.fstat(folder).st_uid
        for name in names:
            path = layout.secrets_dir / name
            fd = open_regular(folder, name, path)
            if fd is None:
                continue  # apply_state names the missing secret
            try:
                info = os.fstat(fd)
                if info.st_uid != owner:
                    raise UnsafePath(
                        f"{path}: a DKIM key must belong to the secrets folder's owner, like "
                        "the keys the API and `mailwarden dkim generate` make; this one "
                        f"belongs to uid {info.st_uid}")
                if info.st_gid != gid:
                    os.fchown(fd, -1, gid)
                if info.st_mode & 0o7777 != 0o640:
                    os.fchmod(fd, 0o640)
            finally:
                os.close(fd)
            adopted.append(path)
    finally:
        os.close(folder)
    return adopted


def share_with_agent(layout: Layout, group: str) -> None:
    """The state file, the revisions and the store belong to the agent's group, whoever (root
    here) created them: the daemons and the API read them as other users.

    The store's folder is writable by every agent user, who may put a link or a hard link
    where SQLite's -wal and -shm files go: each file is opened without following links,
    must be a regular file with one link, and is changed by descriptor; anything else is
    left alone (and logged)."""
    gid = grp.getgrnam(group).gr_gid
    database = layout.database
    store_names = [database.name, database.name + "-wal", database.name + "-shm"]
    places: list[tuple[Path, list[str] | None, bool]] = [
        (layout.state_file.parent, [layout.state_file.name], False),
        (layout.revisions_dir, None, False),  # the folder and every file in it
        (database.parent, store_names, True),
    ]
    for folder_path, names, in_store in places:
        try:
            folder = open_dir(folder_path)
        except FileNotFoundError:
            continue
        try:
            if names is None:
                _share_fd(folder, gid, None)
                names = [n for n in os.listdir(folder) if not n.startswith(".")]
            for name in names:
                try:
                    fd = open_regular(folder, name, folder_path / name)
                except UnsafePath as exc:
                    log.warning("not shared with the agent's group: %s", exc.message)
                    continue
                if fd is None:
                    continue
                try:
                    # SQLite: every user of the store writes it; nobody else reads it.
                    _share_fd(fd, gid, 0o660 if in_store else None)
                finally:
                    os.close(fd)
        finally:
            os.close(folder)


def _share_fd(fd: int, gid: int, mode: int | None) -> None:
    info = os.fstat(fd)
    if info.st_gid != gid:
        os.fchown(fd, -1, gid)
    if mode is not None and info.st_mode & 0o7777 != mode:
        os.fchmod(fd, mode)


__all__ = ["AGENT_GROUP", "SECRETS_GROUP", "adopt_dkim_keys", "group_or_none",
           "share_with_agent"]
