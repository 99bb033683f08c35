"""The stacks an admin would pick instead of Mailwarden, as private sandboxes.

Both reuse the harness's Sandbox as it is: the same rendered Postfix (relaying straight to the
sink, no agent), the same clamd with the EICAR database, Unbound forwarding to the test name
server. Each adds only what makes it that stack, after the sandbox has rendered its files:

b. Rspamd as a milter: Rspamd's proxy worker in milter mode scanning in-process
   (`self_scan`), its antivirus module asking clamd, and Postfix's smtpd calling it. Rspamd's
   packaged defaults otherwise, plus the sandbox's local.d (same DNS, Redis, modules off as in
   Mailwarden's), so the two stacks run the same Rspamd checks.
c. amavisd-new with SpamAssassin (in-process, Debian's rules) and clamd, as Postfix's
   after-queue content filter reinjecting on the sandbox's port 10025 listener.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from mailwarden.control.apply import ApplyResult
from mailwarden.process import run
from mailwarden_dev.instance import Sandbox, _listening
from mailwarden_dev.process import Supervised, wait_until

AMAVIS_USER = "amavis"
# Preforked amavisd children = Postfix's concurrency towards it. Two per core: SpamAssassin
# is CPU-bound, but each child also waits on clamd and DNS.
AMAVIS_CHILDREN = 4


def _postconf(config: Path, *args: str) -> None:
    run(["postconf", "-c", config, *args])
    # Postfix rereads a main.cf written within the current second until it settles (see the
    # apply transaction); date it back so the first start is not slowed by that.
    for name in ("main.cf", "master.cf"):
        then = time.time() - 2
        os.utime(config / name, (then, then))


class RspamdMilterSandbox(Sandbox):
    """Stack b: Postfix -> Rspamd proxy worker (milter, self_scan) -> clamd."""

    def prepare(self, state_text: str | None, author: str = "sandbox") -> ApplyResult | None:
        result = super().prepare(state_text, author)
        ports, p = self.layout.ports, self.layout.path
        local, override = p("/etc/rspamd/local.d"), p("/etc/rspamd/override.d")
        (local / "worker-proxy.inc").write_text(
            f'bind_socket = "127.0.0.1:{ports.rspamd_proxy}";\n'
            "milter = yes;\n"
            "timeout = 120s;\n"
            # The proxy scans by itself (no HTTP hop to a normal worker): Rspamd's advice
            # for a milter-only setup. One process, like the normal worker Rspamd starts on
            # a 2-core machine for Mailwarden.
            'upstream "local" { default = yes; self_scan = yes; }\n'
            "count = 1;\n")
        (local / "antivirus.conf").write_text(
            "clamav {\n"
            "  type = \"clamav\";\n"
            f'  servers = "127.0.0.1:{ports.clamd}";\n'
            '  action = "reject";\n'
            '  symbol = "CLAM_VIRUS";\n'
            # Rspamd's default: attachments only, text parts are not sent to clamd.
            "  scan_mime_parts = true;\n"
            "  log_clean = false;\n"
            "}\n")
        # The sandbox's override turns Rspamd's headers off (the agent writes its own); a
        # milter stack marks mail itself.
        (override / "milter_headers.conf").write_text(
            'use = ["x-spamd-bar", "x-spam-level", "authentication-results"];\n'
            "skip_local = false;\nskip_authenticated = false;\n")
        _postconf(p("/etc/postfix"), "-e",
                  f"smtpd_milters = inet:127.0.0.1:{ports.rspamd_proxy}",
                  "milter_protocol = 6",
                  # As Mailwarden: a scanner that does not answer keeps the mail queued.
                  "milter_default_action = tempfail",
                  "milter_mail_macros = i {mail_addr} {client_addr} {client_name} "
                  "{auth_authen}")
        return result


class AmavisSandbox(Sandbox):
    """Stack c: Postfix -> amavisd-new (SpamAssassin, clamd) -> Postfix port 10025."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, agent_services=False)
        # No Rspamd or Redis in this stack; amavisd starts before Postfix hands it mail.
        self.services = ("unbound", "clamav", "amavis", "postfix")
        self.amavis_home = self.root / "amavis"

    def prepare(self, state_text: str | None, author: str = "sandbox") -> ApplyResult | None:
        result = super().prepare(state_text, author)
        ports, p = self.layout.ports, self.layout.path
        home = self.amavis_home
        for sub in ("", "tmp", "var", "db", "quarantine"):
            (home / sub).mkdir(parents=True, exist_ok=True)
            shutil.chown(home / sub, user=AMAVIS_USER, group=AMAVIS_USER)
        # SpamAssassin's site config: Debian's (plugins, compiled rules), plus the sandbox's
        # resolver, so its DNSBL lookups get answers at once like Rspamd's do.
        site = self.root / "amavis-sa"
        shutil.copytree("/etc/spamassassin", site, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("sa-update-hooks.d"))
        (site / "zz-bench.cf").write_text(f"dns_server 127.0.0.1:{ports.dns}\n")
        conf = self.root / "amavisd.conf"
        conf.write_text(_amavisd_conf(home, site, ports.filter_in, ports.reinject,
                                      ports.clamd))
        conf.chmod(0o644)  # amavisd refuses a config others may write
        config = p("/etc/postfix")
        _postconf(config, "-e", f"content_filter = amavis:[127.0.0.1]:{ports.filter_in}")
        _postconf(config, "-M",
                  f"amavis/unix=amavis unix - - n - {AMAVIS_CHILDREN} smtp")
        for option in ("smtp_data_done_timeout=1200s", "smtp_send_xforward_command=yes",
                       "disable_dns_lookups=yes", "smtp_tls_security_level=none",
                       "max_use=20"):
            _postconf(config, "-P", f"amavis/unix/{option}")
        return result

    def _make(self, service: str) -> Supervised:
        if service == "amavis":
            return Supervised("amavis", ["amavisd", "-c", self.root / "amavisd.conf",
                                         "foreground"], self.root / "logs" / "amavis.out")
        return super()._make(service)

    def _start_service(self, service: str, timeout: float) -> None:
        if service != "amavis":
            super()._start_service(service, timeout)
            return
        daemon = self._make(service)
        self.daemons[service] = daemon
        daemon.start()
        # amavisd compiles SpamAssassin's rules before it listens (10-30 s here).
        wait_until("amavisd", lambda: _listening(self.layout.ports.filter_in), 180,
                   daemon.check_alive)


def _amavisd_conf(home: Path, sa_site: Path, port: int, reinject: int, clamd: int) -> str:
    """Debian's amavisd-new defaults where they matter, on private paths and ports."""
    return f"""\
use strict;
$MYHOME = '{home}';
$TEMPBASE = "$MYHOME/tmp";
$helpers_home = "$MYHOME/var";
$db_home = "$MYHOME/db";
$QUARANTINEDIR = "$MYHOME/quarantine";
$pid_file = "$MYHOME/amavisd.pid";
$lock_file = "$MYHOME/amavisd.lock";
$daemon_user = '{AMAVIS_USER}';
$daemon_group = '{AMAVIS_USER}';
$max_servers = {AMAVIS_CHILDREN};
$mydomain = 'example.test';
$myhostname = 'mx.example.test';
@local_domains_acl = ('example.test');
$inet_socket_bind = '127.0.0.1';
$inet_socket_port = {port};
@inet_acl = qw(127.0.0.1);
$unix_socketname = undef;
$forward_method = 'smtp:[127.0.0.1]:{reinject}';
$notify_method = $forward_method;
$DO_SYSLOG = 0;
$LOGFILE = "$MYHOME/amavis.log";
$log_level = 0;
$enable_db = 0;
$enable_zmq = 0;
$enable_dkim_verification = 0;
# Debian's conf.d turns both checks off until the admin enables them: this stack scans.
@bypass_virus_checks_maps = (0);
@bypass_spam_checks_maps = (0);
@av_scanners = (['ClamAV-clamd', \\&ask_daemon, ['*', 'clamd:127.0.0.1:{clamd}'],
  qr/\\bOK$/m, qr/\\bFOUND$/m, qr/^.*?: (?!Infected Archive)(.*) FOUND$/m]);
@av_scanners_backup = ();
$sa_siteconfigpath = '{sa_site}';
$sa_local_tests_only = 0;
$sa_tag_level_deflt = -999;
$sa_tag2_level_deflt = 6.31;
$sa_kill_level_deflt = 6.31;
$sa_mail_body_size_limit = 200*1024;
$final_virus_destiny = D_DISCARD;
$final_banned_destiny = D_DISCARD;
$final_spam_destiny = D_PASS;
$final_bad_header_destiny = D_PASS;
$virus_admin = undef;
$spam_admin = undef;
1;
"""
