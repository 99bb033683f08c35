"""Commands in the booted test guest through the QEMU guest agent (virtio-serial).

The appliance ships qemu-guest-agent for Proxmox VE; the end-to-end tier uses the same
channel to look inside the guest (nft, systemd-analyze, Lynis) without opening SSH for it.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Result:
    status: int
    out: str
    err: str


class Agent:
    """One connection to the guest agent; a fresh one per command, as a reboot or an earlier
    client may have left the channel in any state."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buffer = b""
        self._sync()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _line(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the guest agent closed the channel")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        # guest-sync-delimited answers are preceded by 0xFF (flushes stale bytes).
        line = line.lstrip(b"\xff").strip()
        return dict(json.loads(line)) if line else {}

    def _sync(self) -> None:
        """Discard whatever an earlier client left in the channel."""
        token = secrets.randbelow(2**31 - 1) + 1
        self.sock.sendall(b"\xff" + json.dumps(
            {"execute": "guest-sync-delimited", "arguments": {"id": token}}).encode() + b"\n")
        while self._line().get("return") != token:
            pass

    def call(self, command: str, **arguments: Any) -> Any:
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            reply = self._line()
            if "error" in reply:
                raise RuntimeError(f"{command}: {reply['error'].get('desc', reply['error'])}")
            if "return" in reply:
                return reply["return"]


def _result(status: dict[str, Any]) -> Result:
    code = 128 + int(status["signal"]) if "signal" in status else int(status.get("exitcode", 1))
    return Result(code,
                  base64.b64decode(status.get("out-data", "")).decode(errors="replace"),
                  base64.b64decode(status.get("err-data", "")).decode(errors="replace"))


class Guest:
    def __init__(self, path: Path) -> None:
        self.path = path

    def wait(self, seconds: float) -> bool:
        """Until the agent answers guest-ping."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                with Agent(self.path, timeout=5) as agent:
                    agent.call("guest-ping")
                return True
            except (OSError, ConnectionError, ValueError, RuntimeError):
                if time.monotonic() > deadline:
                    return False
                time.sleep(2)

    def start(self, argv: list[str]) -> int:
        """Start argv in the guest (no shell); its pid there."""
        with Agent(self.path) as agent:
            return int(agent.call("guest-exec", path=argv[0], arg=argv[1:],
                                  **{"capture-output": True})["pid"])

    def status(self, pid: int) -> Result | None:
        """The ended command's result; None while it runs."""
        with Agent(self.path) as agent:
            status = agent.call("guest-exec-status", pid=pid)
        return _result(status) if status.get("exited") else None

    def run(self, *argv: str, timeout: float = 600) -> Result:
        """Run argv in the guest and wait for it; timeout is a stall guard only."""
        pid = self.start(list(argv))
        deadline = time.monotonic() + timeout
        while (result := self.status(pid)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{argv[0]} still running in the guest after {timeout:.0f} s")
            time.sleep(0.5)
        return result

    def shutdown(self) -> None:
        with Agent(self.path) as agent:
            # guest-shutdown answers nothing when it succeeds.
            agent.sock.sendall(json.dumps({"execute": "guest-shutdown"}).encode() + b"\n")
