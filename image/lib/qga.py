#!/usr/bin/env python3
"""Run commands in a booted test guest through the QEMU guest agent (virtio-serial).

    qga.py SOCKET wait [SECONDS]            until the agent answers guest-ping
    qga.py SOCKET exec [--timeout S] -- ARGV...
                                            run ARGV in the guest (no shell), print its
                                            stdout (stderr to stderr), exit with its status
    qga.py SOCKET start -- ARGV...          start ARGV in the guest, print its pid, return
    qga.py SOCKET status PID                exit 3 while PID runs (4: no answer from the
                                            agent); once it has ended, print its stdout
                                            (stderr to stderr), exit with its status
    qga.py SOCKET shutdown                  power the guest off

The appliance ships qemu-guest-agent for Proxmox VE; the end-to-end test uses the same channel
to look inside the guest (nft, systemd-analyze, Lynis) without opening SSH for it. Standard
library only: it runs with the build host's /usr/bin/python3.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import sys
import time
from typing import Any


class Agent:
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buffer = b""

    def _line(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the guest agent closed the channel")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        # guest-sync-delimited answers are preceded by 0xFF (flushes stale bytes).
        line = line.lstrip(b"\xff").strip()
        return json.loads(line) if line else {}

    def sync(self) -> None:
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


def wait(path: str, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while True:
        try:
            agent = Agent(path, timeout=5)
            agent.sync()
            agent.call("guest-ping")
            return 0
        except (OSError, ConnectionError, ValueError, RuntimeError):
            if time.monotonic() > deadline:
                print(f"qga: no guest agent on {path} after {seconds:.0f} s", file=sys.stderr)
                return 1
            time.sleep(2)


RUNNING = 3  # `status` of a command that has not ended yet
UNREACHABLE = 4  # `status` could not ask the guest agent


def start(agent: Agent, argv: list[str]) -> int:
    return int(agent.call("guest-exec", path=argv[0], arg=argv[1:],
                          **{"capture-output": True})["pid"])


def execute(path: str, argv: list[str], timeout: float) -> int:
    agent = Agent(path)
    agent.sync()
    pid = start(agent, argv)
    deadline = time.monotonic() + timeout
    while True:
        status = agent.call("guest-exec-status", pid=pid)
        if status.get("exited"):
            break
        if time.monotonic() > deadline:
            print(f"qga: {argv[0]} still running after {timeout:.0f} s", file=sys.stderr)
            return 124
        time.sleep(0.5)
    return finished(status)


def finished(status: dict[str, Any]) -> int:
    """Print an ended command's output; its exit status."""
    sys.stdout.buffer.write(base64.b64decode(status.get("out-data", "")))
    sys.stderr.buffer.write(base64.b64decode(status.get("err-data", "")))
    sys.stdout.flush()
    if "signal" in status:
        return 128 + int(status["signal"])
    return int(status.get("exitcode", 1))


def main(args: list[str]) -> int:
    if len(args) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    path, command, rest = args[0], args[1], args[2:]
    if command == "wait":
        return wait(path, float(rest[0]) if rest else 300)
    if command == "exec":
        timeout = 600.0
        if rest[:1] == ["--timeout"]:
            timeout, rest = float(rest[1]), rest[2:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        return execute(path, rest, timeout)
    if command == "start":
        argv = rest[1:] if rest[:1] == ["--"] else rest
        agent = Agent(path)
        agent.sync()
        print(start(agent, argv))
        return 0
    if command == "status":
        try:
            agent = Agent(path)
            agent.sync()
            status = agent.call("guest-exec-status", pid=int(rest[0]))
        except (OSError, ConnectionError, ValueError, RuntimeError) as exc:
            print(f"qga: {exc}", file=sys.stderr)
            return UNREACHABLE
        return finished(status) if status.get("exited") else RUNNING
    if command == "shutdown":
        agent = Agent(path)
        agent.sync()
        # guest-shutdown answers nothing when it succeeds.
        agent.sock.sendall(json.dumps({"execute": "guest-shutdown"}).encode() + b"\n")
        return 0
    print(f"qga: unknown command {command}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
