"""Each service's own config checker, run on a staging copy before anything goes live.

A checker gets the staging root (files at their layout-relative paths) and raises
ServiceError with the tool's own words when it refuses the configuration. Warnings count as
errors: a Postfix "unused parameter" today is a silently ignored setting tomorrow.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import CommandError, ServiceError
from ..layout import Layout
from ..process import run, run_tty, service_user
from ..render.configs import MANIFEST

Checker = Callable[[Path, Layout], None]

RSPAMD_MAIN_CONFIG = Path("/etc/rspamd/rspamd.conf")


def staged(stage: Path, layout: Layout, absolute: str) -> Path:
    """Where the file for appliance path `absolute` sits in the staging folder."""
    return stage / layout.path(absolute).relative_to(layout.root)


def _no_warnings(service: str, output: str) -> None:
    bad = [line for line in output.splitlines()
           if re.match(r"^[\w/-]+: (warning|fatal|error|panic): ", line)]
    if bad:
        raise ServiceError(service, "configuration refused:\n" + "\n".join(bad[:20]))


def check_postfix(stage: Path, layout: Layout) -> None:
    config = staged(stage, layout, "/etc/postfix")
    for flag in ("-n", "-M"):
        _no_warnings("postfix", run(["postconf", "-c", config, flag]).stdout)
    for target in MANIFEST:
        if target.service == "postfix" and "/mailwarden/" in target.path:
            kind = "cidr" if target.path.endswith(".cidr") else "texthash"
            path = staged(stage, layout, target.path)
            result = run(["postmap", "-c", config, "-q", "mailwarden-check.invalid",
                          f"{kind}:{path}"], check=False)
            _no_warnings("postfix", result.stdout)
    try:
        run_tty(["postfix", "-c", config, "check"])
    except CommandError as exc:
        raise ServiceError(
            "postfix", f"postfix check refused the configuration: {exc.output}"
        ) from None


def check_rspamd(stage: Path, layout: Layout) -> None:
    local = staged(stage, layout, "/etc/rspamd")
    result = run(
        ["rspamadm", f"--var=LOCAL_CONFDIR={local}", "configtest", "-c", RSPAMD_MAIN_CONFIG],
        check=False,
    )
    if result.returncode != 0 or "syntax OK" not in result.stdout:
        raise ServiceError("rspamd", "rspamadm configtest refused:\n" + result.stdout[-3000:])


def check_clamav(stage: Path, layout: Layout) -> None:
    folder = staged(stage, layout, "/etc/clamav")
    output = run(["clamconf", "-c", folder], check=False).stdout
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    if errors:
        raise ServiceError("clamav", "clamconf refused:\n" + "\n".join(errors))


def check_unbound(stage: Path, layout: Layout) -> None:
    conf = staged(stage, layout, "/etc/unbound/unbound.conf")
    try:
        run(["unbound-checkconf", conf])
    except CommandError as exc:
        raise ServiceError("unbound", f"unbound-checkconf refused: {exc.output.strip()}") from None


def check_redis(stage: Path, layout: Layout) -> None:
    """Redis has no config checker: start it on a private socket and stop it again, as
    Redis's own user when we are root (as the service runs)."""
    conf = staged(stage, layout, "/etc/redis/redis.conf")
    owner = service_user(layout.users.redis)
    with tempfile.TemporaryDirectory(prefix="mw-redis-check-") as tmp:
        if owner is not None:
            os.chown(tmp, *owner)
        sock = Path(tmp) / "redis.sock"
        argv = ["redis-server", str(conf), "--port", "0", "--unixsocket", str(sock),
                "--dir", tmp, "--daemonize", "no", "--logfile", "", "--pidfile",
                str(Path(tmp) / "pid"), "--save", ""]
        drop: dict[str, Any] = {} if owner is None else {
            "user": owner[0], "group": owner[1], "extra_groups": []}
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, **drop)
        try:
            deadline = time.monotonic() + 10
            while not sock.exists():
                if process.poll() is not None:
                    output = process.stdout.read() if process.stdout else ""
                    raise ServiceError("redis", "redis-server refused the configuration:\n"
                                       + output[-2000:])
                if time.monotonic() > deadline:
                    raise ServiceError("redis", "redis-server did not start with this config")
                time.sleep(0.02)
        finally:
            if process.poll() is None:
                process.terminate()
            process.wait(timeout=10)


def check_nftables(stage: Path, layout: Layout) -> None:
    """`nft -c` parses the ruleset and has the kernel dry-run it without committing, so a
    sandbox's check never changes the host's firewall. It needs CAP_NET_ADMIN: without root
    it runs in a user and network namespace of its own. No nft (a developer's machine without
    nftables): nothing to check with; the appliance always has it."""
    if shutil.which("nft") is None:
        return
    conf = staged(stage, layout, "/etc/nftables.conf")
    argv: list[str | Path] = ["nft", "-c", "-f", conf]
    if os.geteuid() != 0:
        argv = ["unshare", "--user", "--map-root-user", "--net", *argv]
    try:
        run(argv)
    except CommandError as exc:
        raise ServiceError("nftables",
                           f"nft -c refused the ruleset: {exc.output.strip()}") from None


def check_freshclam(stage: Path, layout: Layout) -> None:
    check_clamav(stage, layout)  # clamconf reads freshclam.conf from the same folder


CHECKERS: dict[str, Checker] = {
    "postfix": check_postfix,
    "rspamd": check_rspamd,
    "clamav": check_clamav,
    "freshclam": check_freshclam,
    "redis": check_redis,
    "unbound": check_unbound,
    "nftables": check_nftables,
}
