"""The one way the agent runs another program: argv lists, checked exit codes, typed errors.

No shell, ever: arguments are passed as a list, so a domain name or a file path can never
become a command.
"""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import CommandError


def service_user(name: str) -> tuple[int, int] | None:
    """(uid, gid) of a service's user for a child to drop to; None when this process is not
    root (nothing to drop from) or the user does not exist (a sandbox runs as one user)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def run(
    argv: Sequence[str | Path],
    *,
    check: bool = True,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input_text: str | None = None,
    user: int | None = None,
    group: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv, capture stdout+stderr together; raise CommandError on failure if check.

    user/group: run it as that user and group only (no supplementary groups)."""
    args = [str(a) for a in argv]
    full_env = {**os.environ, **env} if env else None
    try:
        result = subprocess.run(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            env=full_env,
            cwd=cwd,
            input=input_text,
            check=False,
            user=user,
            group=group,
            extra_groups=[] if user is not None else None,
        )
    except FileNotFoundError:
        raise CommandError(args, 127, f"{args[0]}: command not found") from None
    except subprocess.TimeoutExpired as exc:
        out = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else ""
        raise CommandError(args, -1, f"timed out after {timeout} s\n{out}") from None
    if check and result.returncode != 0:
        raise CommandError(args, result.returncode, result.stdout)
    return result


def run_tty(
    argv: Sequence[str | Path], *, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a command that prints its errors only to a terminal (`postfix check`).

    `script -qefc` gives it a pseudo-terminal and keeps its exit code (without `-e`, `script`
    always returns 0); Postfix's `check` and `start` print fatal errors nowhere else.
    """
    # `script -c` takes one command line: every argument is quoted for /bin/sh.
    command = shlex.join(str(a) for a in argv)
    return run(["script", "-qefc", command, "/dev/null"], timeout=timeout)
