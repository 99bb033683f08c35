"""Secrets on disk: files under the secrets folder, mode 0600, referenced by name.

First boot (and a sandbox) generates the machine's own: a self-signed TLS certificate until
the admin installs a real one. Keys never pass through the state file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .process import run


def ensure_secrets_dir(folder: Path) -> None:
    """A new folder is 0700. An existing one keeps its owner and group: on the appliance it is
    root:mailwarden-secrets 2770, so that the API (which writes DKIM keys) and the content
    filter (which signs with them) share it as different users; only access for others is
    taken away, never given."""
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        return
    mode = folder.stat().st_mode & 0o7777
    if mode & 0o007:
        os.chmod(folder, mode & ~0o007)


def ensure_self_signed(folder: Path, name: str, hostname: str, days: int = 3650) -> bool:
    """Create <name>.key (0600) and <name>.crt for hostname unless both exist. True if made."""
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    if key.exists() and cert.exists():
        return False
    ensure_secrets_dir(folder)
    # Generate beside the target and rename, so a crash never leaves half a key pair.
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        tmp_key, tmp_cert = Path(tmp) / "key", Path(tmp) / "crt"
        run([
            "openssl", "req", "-x509", "-newkey", "rsa:3072", "-sha256", "-nodes",
            "-days", str(days), "-subj", f"/CN={hostname}",
            "-addext", f"subjectAltName=DNS:{hostname}",
            "-keyout", tmp_key, "-out", tmp_cert,
        ])
        os.chmod(tmp_key, 0o600)
        os.chmod(tmp_cert, 0o644)
        os.replace(tmp_key, key)
        os.replace(tmp_cert, cert)
    return True
