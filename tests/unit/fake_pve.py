"""A recording stand-in for Proxmox VE's `qm` and `pvesm`, strict about their options.

Installed on PATH by tests/unit/test_proxmox_import.py as two small wrappers that run this file
with the command's name first. Each call is appended as a JSON list to $FAKE_PVE_DIR/calls.jsonl
and checked against the option table below; an option or value the real command would refuse
makes the fake exit 2 with the reason on stderr, as qm does with a parameter verification error.

The table is transcribed from qemu-server (src/PVE/QemuServer.pm $confdesc and its formats,
src/PVE/QemuServer/Drive.pm for the drive keys, src/PVE/QemuServer/Network.pm for net and
ipconfig, src/PVE/API2/Qemu.pm for the `import-from` rules, src/PVE/CLI/qm.pm for the
`sshkeys` file mapping; qemu-server at e6352be67f70) and from the qm(1) and pvesm(1) synopses
(pve-docs generated/qm.1-synopsis.adoc and pvesm.1-synopsis.adoc at e5010dcea566). It covers
the options the import script uses and a few neighbours, not the whole of qm.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

_LABEL = r"[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?"
DNS_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
STORAGE_ID = re.compile(r"[a-z][a-z0-9\-_.]*[a-z0-9]")
_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"({_OCTET}\.){{3}}{_OCTET}")
IPV4_CIDR = re.compile(rf"({_OCTET}\.){{3}}{_OCTET}/([0-9]|[12][0-9]|3[0-2])")
BOOL = {"0", "1"}
SIZE = re.compile(r"\+?\d+(\.\d+)?[KMGT]?")


class Refused(Exception):
    pass


def _kv(value: str, default_key: str | None) -> dict[str, str]:
    """A Proxmox property string: key=value pairs, the first may omit its default key."""
    out: dict[str, str] = {}
    for index, part in enumerate(value.split(",")):
        if "=" in part:
            key, val = part.split("=", 1)
        elif index == 0 and default_key is not None:
            key, val = default_key, part
        else:
            raise Refused(f"'{part}' is not key=value")
        if key in out:
            raise Refused(f"duplicate key '{key}'")
        out[key] = val
    return out


def _check_keys(props: dict[str, str], allowed: dict[str, Callable[[str], bool]]) -> None:
    for key, val in props.items():
        if key not in allowed:
            raise Refused(f"unknown key '{key}'")
        if not allowed[key](val):
            raise Refused(f"bad value '{val}' for '{key}'")


def _enum(*values: str) -> Callable[[str], bool]:
    return lambda v: v in values


def _match(pattern: re.Pattern[str] | str) -> Callable[[str], bool]:
    compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
    return lambda v: compiled.fullmatch(v) is not None


def _any(v: str) -> bool:
    return bool(v)


def _abs_path(v: str) -> bool:
    return v.startswith("/") and Path(v).is_file()


# Keys of drive property strings (Drive.pm: %drivedesc_base, %iothread_fmt, efitype_fmt...).
_DRIVE_BASE: dict[str, Callable[[str], bool]] = {
    "file": _any, "media": _enum("cdrom", "disk"), "format": _enum("raw", "qcow2", "vmdk"),
    "cache": _enum("none", "writethrough", "writeback", "unsafe", "directsync"),
    "discard": _enum("ignore", "on"), "size": _match(SIZE), "backup": _enum(*BOOL),
    "snapshot": _enum(*BOOL), "replicate": _enum(*BOOL), "aio": _enum("native", "threads",
                                                                       "io_uring"),
    "import-from": _abs_path,
}
_SCSI = {**_DRIVE_BASE, "iothread": _enum(*BOOL), "ssd": _enum(*BOOL), "ro": _enum(*BOOL)}
_EFI = {"file": _any, "format": _DRIVE_BASE["format"], "size": _match(SIZE),
        "efitype": _enum("2m", "4m"), "pre-enrolled-keys": _enum(*BOOL),
        "ms-cert": _enum("2011", "2023", "2023w", "2023k"), "import-from": _abs_path}
NEW_DISK = re.compile(rf"({STORAGE_ID.pattern}):(\d+(\.\d+)?)")


def _drive(value: str, keys: dict[str, Callable[[str], bool]]) -> dict[str, str]:
    props = _kv(value, "file")
    _check_keys(props, keys)
    new = NEW_DISK.fullmatch(props["file"])
    volume = re.fullmatch(rf"{STORAGE_ID.pattern}:[\w./-]+", props["file"])
    if not new and not volume and not props["file"].startswith("/dev/"):
        raise Refused(f"'{props['file']}' is neither STORAGE:SIZE nor a volume")
    # API2/Qemu.pm: import-from needs the new-disk syntax with size 0.
    if "import-from" in props and not (new and float(new.group(2)) == 0):
        raise Refused("'import-from' requires special syntax - use <storage ID>:0,"
                      "import-from=<source>")
    return props


def _efidisk(value: str) -> None:
    props = _drive(value, _EFI)
    if props.get("pre-enrolled-keys") == "1" and props.get("efitype") != "4m":
        # OVMF.pm: the keys are enrolled only in the 4m vars template.
        raise Refused("pre-enrolled-keys=1 needs efitype=4m")


def _ide(value: str) -> None:
    if re.fullmatch(rf"{STORAGE_ID.pattern}:cloudinit", value):
        return
    _drive(value, _DRIVE_BASE)


_NET_MODELS = ("e1000", "e1000-82540em", "e1000-82544gc", "e1000-82545em", "e1000e",
               "i82551", "i82557b", "i82559er", "ne2k_isa", "ne2k_pci", "pcnet", "rtl8139",
               "virtio", "vmxnet3")
_MAC = r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}"


def _net(value: str) -> None:
    parts = value.split(",")
    first = parts[0].split("=", 1)
    if first[0] not in _NET_MODELS:
        raise Refused(f"'{first[0]}' is not a network card model")
    if len(first) == 2 and not re.fullmatch(_MAC, first[1]):
        raise Refused(f"'{first[1]}' is not a MAC address")
    props = _kv(",".join(parts[1:]), None) if parts[1:] else {}
    _check_keys(props, {"bridge": _match(r"[-_.\w\d]+"), "firewall": _enum(*BOOL),
                        "tag": _match(r"\d+"), "mtu": _match(r"\d+"),
                        "queues": _match(r"\d+"), "link_down": _enum(*BOOL),
                        "macaddr": _match(_MAC)})


def _ipconfig(value: str) -> None:
    props = _kv(value, None)
    _check_keys(props, {
        "ip": lambda v: v == "dhcp" or IPV4_CIDR.fullmatch(v) is not None,
        "gw": _match(IPV4),
        "ip6": lambda v: v in ("dhcp", "auto") or re.fullmatch(r"[0-9a-fA-F:]+/\d+", v)
        is not None,
        "gw6": _match(r"[0-9a-fA-F:]+")})
    # Network.pm: gw requires ip; the docs: no gateway with DHCP.
    if "gw" in props and props.get("ip", "dhcp") == "dhcp":
        raise Refused("gw needs a static ip")
    if "gw6" in props and "ip6" not in props:
        raise Refused("gw6 needs ip6")


def _cicustom(value: str) -> None:
    props = _kv(value, None)
    volume = _match(rf"{STORAGE_ID.pattern}:snippets/[\w.-]+")
    _check_keys(props, {"meta": volume, "network": volume, "user": volume, "vendor": volume})


def _address_list(value: str) -> None:
    for address in re.split(r"[,;\s]+", value.strip()):
        if not (IPV4.fullmatch(address) or re.fullmatch(r"[0-9a-fA-F:]+", address)):
            raise Refused(f"'{address}' is not an IP address")


def _sshkeys(value: str) -> None:
    # qm.pm maps the CLI value through file_get_contents: it is a file name.
    if not Path(value).is_file():
        raise Refused(f"{value}: no such file")


def _check(fn: Callable[[str], object]) -> Callable[[str], None]:
    def checker(value: str) -> None:
        if fn(value) is False:
            raise Refused(f"bad value '{value}'")
    return checker


def _int_range(low: int, high: int) -> Callable[[str], bool]:
    return lambda v: v.isdigit() and low <= int(v) <= high


QM_OPTIONS: dict[str, Callable[[str], object]] = {
    "name": _match(DNS_NAME),
    "ostype": _enum("other", "wxp", "w2k", "w2k3", "w2k8", "wvista", "win7", "win8", "win10",
                    "win11", "l24", "l26", "solaris"),
    "machine": _match(r"(type=)?(q35|pc|pc-q35-\d+(\.\d+)+(\+pve\d+)?|pc-i440fx-\d+(\.\d+)+"
                      r"(\+pve\d+)?)(,viommu=(intel|virtio))?"),
    "bios": _enum("seabios", "ovmf"),
    "efidisk0": _efidisk,
    "scsihw": _enum("lsi", "lsi53c810", "virtio-scsi-pci", "virtio-scsi-single", "megasas",
                    "pvscsi"),
    "scsi0": lambda v: _drive(v, _SCSI),
    "ide2": _ide,
    "boot": _match(r"order=[a-z]+\d+(;[a-z]+\d+)*"),
    "cores": _int_range(1, 1024),
    "sockets": _int_range(1, 4),
    "memory": _match(r"(current=)?\d+"),
    "net0": _net,
    "agent": _match(r"(enabled=)?[01](,freeze-fs=[01])?(,fstrim_cloned_disks=[01])?"
                    r"(,type=(virtio|isa))?"),
    "serial0": _match(r"/dev/[^,]+|socket"),
    "vga": _match(r"(type=)?(cirrus|qxl|qxl2|qxl3|qxl4|none|serial[0-3]|std|virtio|virtio-gl|"
                  r"vmware)(,memory=\d+)?"),
    "onboot": _enum(*BOOL),
    "citype": _enum("configdrive2", "nocloud", "opennebula"),
    "cicustom": _cicustom,
    "ciuser": _any,
    "ciupgrade": _enum(*BOOL),
    "ipconfig0": _ipconfig,
    "nameserver": _address_list,
    "searchdomain": _any,
    "sshkeys": _sshkeys,
}


def _options(args: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    while args:
        flag = args.pop(0)
        if not flag.startswith("--"):
            raise Refused(f"unexpected argument '{flag}'")
        key = flag[2:]
        if key not in QM_OPTIONS:
            raise Refused(f"unknown option '{key}'")
        if not args:
            raise Refused(f"option '{key}' needs a value")
        value = args.pop(0)
        try:
            _check(QM_OPTIONS[key])(value)
        except Refused as exc:
            raise Refused(f"{key}: {exc}") from None
        options[key] = value
    return options


def _vm(state: Path, vmid: str, *, exists: bool) -> Path:
    if not re.fullmatch(r"[1-9]\d{2,8}", vmid):
        raise Refused(f"vmid: '{vmid}' is not a valid VM ID")
    conf = state / "qemu-server" / f"{vmid}.conf"
    if exists and not conf.exists():
        raise Refused(f"Configuration file 'nodes/pve/qemu-server/{vmid}.conf' does not exist")
    if not exists and conf.exists():
        raise Refused(f"VM {vmid} already exists")
    return conf


def qm(state: Path, args: list[str]) -> str:
    if not args:
        raise Refused("no command")
    command, rest = args[0], args[1:]
    if command in ("create", "set"):
        if not rest:
            raise Refused("vmid missing")
        conf = _vm(state, rest[0], exists=command == "set")
        options = _options(rest[1:])
        if command == "create":
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(json.dumps(options))
        else:
            conf.write_text(json.dumps({**json.loads(conf.read_text()), **options}))
        return ""
    if command == "disk" and rest[:1] == ["resize"]:
        if len(rest) != 4:
            raise Refused("usage: qm disk resize <vmid> <disk> <size>")
        conf = _vm(state, rest[1], exists=True)
        if rest[2] not in json.loads(conf.read_text()):
            raise Refused(f"disk '{rest[2]}' does not exist")
        if not SIZE.fullmatch(rest[3]):
            raise Refused(f"size: '{rest[3]}' is not a size")
        return ""
    if command in ("start", "terminal", "status") and len(rest) == 1:
        _vm(state, rest[0], exists=True)
        return ""
    raise Refused(f"unknown command 'qm {' '.join(args)}'")


def pvesm(state: Path, args: list[str]) -> str:
    snippets = [s for s in os.environ.get("FAKE_PVE_SNIPPETS", "local").split(",") if s]
    if args == ["status", "--content", "snippets"]:
        lines = ["Name             Type     Status           Total            Used"]
        inactive = os.environ.get("FAKE_PVE_INACTIVE", "").split(",")
        lines += [f"{s:<16} dir      {'inactive' if s in inactive else 'active':<8}      "
                  "1000000          1000" for s in snippets]
        return "\n".join(lines) + "\n"
    if len(args) == 2 and args[0] == "path":
        match = re.fullmatch(rf"({STORAGE_ID.pattern}):snippets/([\w.-]+)", args[1])
        if not match:
            raise Refused(f"unable to parse volume ID '{args[1]}'")
        if match.group(1) not in snippets:
            raise Refused(f"storage '{match.group(1)}' does not support content type "
                          "'snippets'")
        return str(state / "snippets" / match.group(1) / "snippets" / match.group(2)) + "\n"
    raise Refused(f"unknown command 'pvesm {' '.join(args)}'")


def main(argv: list[str]) -> int:
    state = Path(os.environ["FAKE_PVE_DIR"])
    program, args = argv[1], argv[2:]
    with (state / "calls.jsonl").open("a") as log:
        log.write(json.dumps([program, *args]) + "\n")
    try:
        out = {"qm": qm, "pvesm": pvesm}[program](state, list(args))
    except Refused as exc:
        print(f"400 Parameter verification failed.\n{exc}", file=sys.stderr)
        return 2
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
