"""The firewall rendered from the state: nft accepts it, refuses a broken one, and, loaded into
a private network namespace, really lets through only whom networks.* name.

Everything here happens in network namespaces this test creates (documentation addresses
192.0.2.0/24 on a veth pair between them); the host's own ruleset is only read, never loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden.control.checks import check_nftables, staged
from mailwarden.errors import ServiceError
from mailwarden.layout import Layout, appliance, sandbox
from mailwarden.render.configs import render
from mailwarden.state.load import load_state_text

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("nft") is None, reason="nftables is not installed"),
]

ROOT = Path(__file__).parent.parent.parent
sys.path.insert(0, str(ROOT / "image" / "lib"))
import nftrules  # noqa: E402  (image/lib: the end-to-end tier's reader, tested here too)

GATEWAY, MANAGER, STRANGER = "192.0.2.1", "192.0.2.10", "192.0.2.20"


def state(networks: str) -> str:
    return ("version: 1\nsystem: {hostname: mx.example.test}\n"
            f"networks: {networks}\n"
            "domains: [{name: example.test, transport: {host: 10.0.0.5}}]\n")


def ruleset(networks: str, layout: Layout) -> str:
    files = render(load_state_text(state(networks)), layout)
    return next(f.content for f in files if f.target.service == "nftables")


def stage_with(tmp_path: Path, layout: Layout, content: str) -> Path:
    path = staged(tmp_path, layout, "/etc/nftables.conf")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    path.parent.chmod(0o755)
    tmp_path.chmod(0o755)
    path.chmod(0o644)
    return tmp_path


def host_ruleset() -> str:
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True,
                          check=True).stdout


# --- nft -c -------------------------------------------------------------------------------


@pytest.mark.parametrize("networks", [
    "{}",
    "{trusted: [10.0.0.0/8, '2001:db8::/32'], management: [10.0.99.0/24], ssh: true}",
    "{trusted: [10.0.0.0/8, 10.1.0.0/16], ssh: true}",
])
def test_rendered_ruleset_passes_nft_check_and_leaves_the_host_alone(
        tmp_path: Path, networks: str) -> None:
    layout = sandbox(tmp_path / "sb")
    before = host_ruleset()
    check_nftables(stage_with(tmp_path / "stage", layout, ruleset(networks, layout)), layout)
    assert host_ruleset() == before


def test_broken_ruleset_is_refused(tmp_path: Path) -> None:
    layout = sandbox(tmp_path / "sb")
    broken = ruleset("{}", layout).replace("tcp dport", "tcp dprot", 1)
    with pytest.raises(ServiceError) as caught:
        check_nftables(stage_with(tmp_path / "stage", layout, broken), layout)
    assert "nft -c refused the ruleset" in str(caught.value)
    assert "dprot" in str(caught.value)


@pytest.fixture
def open_folder() -> Iterator[Path]:
    # Not tmp_path (under a 0700 folder): the unprivileged user must read the staged file.
    folder = Path(tempfile.mkdtemp(prefix="mw-firewall-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_check_works_for_an_unprivileged_user(open_folder: Path) -> None:
    """A developer's sandbox without root: the check runs in namespaces of its own."""
    layout = sandbox(open_folder / "sb")
    stage = stage_with(open_folder / "stage", layout,
                       ruleset("{trusted: [10.0.0.0/8]}", layout))
    probe = subprocess.run(["setpriv", "--reuid", "nobody", "--regid", "nogroup",
                            "--clear-groups", "unshare", "--user", "--map-root-user", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no user namespaces here: {probe.stderr.strip()}")
    code = ("import sys; from pathlib import Path; "
            "from mailwarden.control.checks import check_nftables; "
            "from mailwarden.layout import Layout; "
            f"check_nftables(Path({str(stage)!r}), Layout.from_json({layout.to_json()!r}))")
    result = subprocess.run(["setpriv", "--reuid", "nobody", "--regid", "nogroup",
                             "--clear-groups", sys.executable, "-c", code],
                            capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr


# --- real traffic in private namespaces -------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """A gateway and a client namespace joined by a veth pair. The client has two
    addresses: the manager's and a stranger's."""
    tag = uuid.uuid4().hex[:6]
    gateway, client = f"mwfw-gw-{tag}", f"mwfw-cl-{tag}"
    _ip("netns", "add", gateway)
    _ip("netns", "add", client)
    try:
        _ip("link", "add", f"mwg{tag}", "netns", gateway, "type", "veth",
            "peer", "name", f"mwc{tag}", "netns", client)
        for ns, dev, addresses in ((gateway, f"mwg{tag}", [GATEWAY]),
                                   (client, f"mwc{tag}", [MANAGER, STRANGER])):
            for address in addresses:
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield gateway, client
    finally:
        for ns in (gateway, client):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


LISTEN = """
import socket, sys, time
servers = []
for port in map(int, sys.argv[1:]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16); servers.append(s)
print("listening", flush=True)
time.sleep(120)
"""

CONNECT = """
import json, socket, sys
result = {}
for source in sys.argv[2].split(","):
    for port in map(int, sys.argv[3].split(",")):
        s = socket.socket(); s.settimeout(1.5); s.bind((source, 0))
        try:
            s.connect((sys.argv[1], port)); result[f"{source}:{port}"] = True
        except OSError:
            result[f"{source}:{port}"] = False
        finally:
            s.close()
print(json.dumps(result))
"""


def reachable(gateway: str, client: str, content: str, ports: list[int],
              tmp_path: Path) -> tuple[dict[str, bool], dict[str, object]]:
    """Load the ruleset in the gateway namespace; which (source, port) pairs connect, and the
    loaded ruleset as nft -j lists it."""
    conf = tmp_path / "nftables.conf"
    conf.write_text(content)
    netns = ["ip", "netns", "exec"]
    subprocess.run([*netns, gateway, "nft", "-f", str(conf)], check=True, capture_output=True)
    listed = json.loads(subprocess.run([*netns, gateway, "nft", "-j", "list", "ruleset"],
                                       check=True, capture_output=True, text=True).stdout)
    listener = subprocess.Popen([*netns, gateway, sys.executable, "-c", LISTEN,
                                 *map(str, ports)], stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline() == "listening\n"
        out = subprocess.run([*netns, client, sys.executable, "-c", CONNECT, GATEWAY,
                              f"{MANAGER},{STRANGER}", ",".join(map(str, ports))],
                             check=True, capture_output=True, text=True, timeout=60).stdout
    finally:
        listener.kill()
        listener.wait()
    return json.loads(out), listed


@pytest.mark.skipif(os.geteuid() != 0, reason="creating network namespaces needs root")
def test_management_networks_decide_who_reaches_8006(namespaces: tuple[str, str],
                                                     tmp_path: Path) -> None:
    gateway, client = namespaces
    ports = [25, 26, 8006, 22]
    content = ruleset(f"{{trusted: [198.51.100.0/24], management: [{MANAGER}/32], ssh: true}}",
                      appliance())
    seen, listed = reachable(gateway, client, content, ports, tmp_path)
    assert seen == {
        f"{MANAGER}:25": True, f"{STRANGER}:25": True,  # SMTP from anywhere
        f"{MANAGER}:26": False, f"{STRANGER}:26": False,  # neither is trusted
        f"{MANAGER}:8006": True, f"{STRANGER}:8006": False,
        f"{MANAGER}:22": True, f"{STRANGER}:22": False,
    }
    # The end-to-end tier's reader sees the same in the loaded ruleset.
    assert nftrules.describe(nftrules.sources(listed, 8006)) == [f"{MANAGER}/32"]
    assert nftrules.describe(nftrules.sources(listed, 26)) == ["198.51.100.0/24"]
    assert nftrules.describe(nftrules.sources(listed, 25)) == [nftrules.ANY]


@pytest.mark.skipif(os.geteuid() != 0, reason="creating network namespaces needs root")
def test_no_management_networks_close_8006_to_everyone(namespaces: tuple[str, str],
                                                       tmp_path: Path) -> None:
    gateway, client = namespaces
    seen, listed = reachable(gateway, client, ruleset("{ssh: true}", appliance()),
                             [25, 8006, 22], tmp_path)
    assert seen == {f"{MANAGER}:25": True, f"{STRANGER}:25": True,
                    f"{MANAGER}:8006": False, f"{STRANGER}:8006": False,
                    f"{MANAGER}:22": False, f"{STRANGER}:22": False}
    assert nftrules.describe(nftrules.sources(listed, 8006)) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="creating network namespaces needs root")
def test_empty_management_falls_back_to_the_trusted_networks(namespaces: tuple[str, str],
                                                             tmp_path: Path) -> None:
    gateway, client = namespaces
    seen, _ = reachable(gateway, client, ruleset(f"{{trusted: [{STRANGER}/32]}}", appliance()),
                        [26, 8006, 22], tmp_path)
    assert seen == {f"{MANAGER}:26": False, f"{STRANGER}:26": True,
                    f"{MANAGER}:8006": False, f"{STRANGER}:8006": True,
                    f"{MANAGER}:22": False, f"{STRANGER}:22": False}  # ssh is off
