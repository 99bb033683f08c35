"""What mailwarden-boot-report.service prints on the console (`MWREPORT ...` lines), and the
lines a boot must show: shared by the boots that read it."""

from __future__ import annotations

import re

INSTALLED = ["postfix", "rspamd", "redis-server", "unbound", "clamav-daemon", "clamav-freshclam",
             "nftables", "chrony", "qemu-guest-agent", "apparmor", "unattended-upgrades"]
# Active on an appliance that is not set up yet ...
ACTIVE = ["unbound", "nftables", "mailwarden-firstboot", "mailwarden-api"]
# ... and what waits for its first state (mailwarden-mail.target starts them): it accepts no
# mail before it is set up.
WAITING = {f"{unit} waits for the first state":
           f"MWREPORT unit={unit}.service LoadState=loaded ActiveState=inactive "
           "UnitFileState=disabled"
           for unit in ["postfix", "rspamd", "redis-server", "clamav-daemon",
                        "mailwarden-filter", "mailwarden-policy"]}
FIRMWARE_LINE = {"bios": "MWREPORT firmware=bios", "uefi": "MWREPORT firmware=uefi",
                 "secureboot": "MWREPORT firmware=uefi secureboot=on"}
# The hardening every boot shows, whatever it was seeded with.
HARDENING = {"firewall input policy drop": "MWREPORT nft-input-policy=drop",
             "AppArmor enabled": "MWREPORT apparmor-enabled=Y",
             "no compilers": "MWREPORT compilers=none",
             "no failed units": r"MWREPORT system=.* failed=\[\]"}


def has(console: str, pattern: str) -> None:
    assert re.search(pattern, console), f"no console line matching {pattern!r}"
