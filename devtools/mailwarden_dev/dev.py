"""`mailwarden-dev` (and `./build.sh dev`): the whole gateway on this machine.

Runs every daemon privately under a run folder, from a given state or from a built-in
example whose relay domain example.test delivers to a local SMTP sink that keeps each
message as a file. Prints the endpoints and writes them to endpoints.json; supervises the
daemons (restarting any that exits, as systemd would); Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from mailwarden.errors import MailwardenError
from mailwarden.firstboot import setupcode
from mailwarden.layout import LAYOUT_FILE
from mailwarden.store.credentials import CredentialStore
from mailwarden.store.users import Users

from .errors import HarnessError
from .instance import Sandbox


def example_state(sink_port: int) -> str:
    return f"""\
# Built-in example state of `mailwarden-dev`: example.test is relayed to the local sink.
version: 1
system:
  hostname: mx.example.test
networks:
  trusted: [192.168.0.0/16]
domains:
  - name: example.test
    transport:
      host: 127.0.0.1
      port: {sink_port}
      tls: none
spam:
  fuzzy_check: false   # needs rspamd.com; this machine has no internet
"""


def _fresh_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and any(run_dir.iterdir()):
        if not (run_dir / LAYOUT_FILE).exists():
            raise HarnessError(f"{run_dir} is not empty and not a Mailwarden run folder; "
                               "choose another with --run-dir")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def run_dev(state_path: Path | None, run_dir: Path | None, fresh: bool = False) -> int:
    run_dir = (run_dir or Path.cwd() / "run" / "dev").resolve()
    _fresh_run_dir(run_dir)
    sandbox = Sandbox(run_dir, agent_services=True, api=True)
    # --fresh without a state: a fresh appliance, where only the web wizard runs until it
    # has applied the first state.
    text = (state_path.read_text(encoding="utf-8") if state_path
            else None if fresh else example_state(sandbox.sink.port))

    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"starting the gateway in {run_dir} ...", flush=True)
    sandbox.start(text)
    endpoints = sandbox.endpoints()
    print(f"ready in {sandbox.started_in:.1f} s; endpoints (also in {run_dir}/endpoints.json):")
    print(json.dumps(endpoints, indent=2))
    if fresh:
        # Like a fresh appliance: no admin until someone with this code runs the wizard.
        code = setupcode.issue(sandbox.layout.setup_code)
        print(f"first-run wizard: https://127.0.0.1:{sandbox.layout.ports.api}/  "
              f"setup code {code}")
        if text is None:
            print(f"(as internal mail server give 127.0.0.1 port {sandbox.sink.port}, the "
                  "local sink; the mail daemons start once the wizard has applied a state)")
    else:
        password = secrets.token_urlsafe(12)
        Users(CredentialStore.for_layout(sandbox.layout)).add("admin", password, "admin")
        print(f"API login:  admin / {password}  (this run only)")
    to = "user@YOUR-DOMAIN" if text is None else "user@example.test"
    print(f"send mail:  swaks --server {endpoints['smtp']} --to {to}")
    print(f"change it:  mailwarden apply --root {run_dir} NEW-STATE.yaml")
    print("Ctrl-C stops everything.", flush=True)
    try:
        while not stopping:
            if len(sandbox.daemons) < len(sandbox.services) and sandbox.layout.state_file.exists():
                print("a state was applied; starting the mail daemons", flush=True)
                sandbox.start_remaining()
            for name, daemon in sandbox.daemons.items():
                if not daemon.running:
                    print(f"{name} exited; starting it again", file=sys.stderr, flush=True)
                    sandbox.launch(name)
            time.sleep(0.5)
    finally:
        print("stopping ...", flush=True)
        sandbox.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mailwarden-dev",
        description="run the whole gateway on this machine (private daemons)")
    parser.add_argument("--state", help="state file (default: a built-in example)")
    parser.add_argument("--run-dir", help="folder for the instance (default: ./run/dev)")
    parser.add_argument("--fresh", action="store_true",
                        help="no admin yet: the web UI opens the first-run wizard (code printed)")
    args = parser.parse_args(argv)
    try:
        return run_dev(Path(args.state) if args.state else None,
                       Path(args.run_dir) if args.run_dir else None, fresh=args.fresh)
    except MailwardenError as exc:
        print(f"mailwarden-dev: {exc.message} [{exc.code}]", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
