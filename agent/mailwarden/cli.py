"""`mailwarden ...`: the command line, for first set-up, recovery and scripts.

Like `postconf`, it shows the one source of truth: `mailwarden state show -n` prints what
differs from the defaults, `mailwarden state show spam.levels` one value. Errors print a
sentence for a person and `[code]` for a script; the exit status says which kind.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from .control.apply import apply_state, rollback
from .control.service import Controller, controller_for
from .errors import AlreadySetUp, ConflictError, MailwardenError, StateError
from .firstboot import setupcode
from .firstboot.answers import validate_answers
from .firstboot.boot import API_USER, api_owner, open_mail_path, run_firstboot
from .firstboot.configure import Host, NullHost, adopt_earlier_setup, apply_answers, is_set_up
from .firstboot.host import ApplianceHost
from .firstboot.seed import Seed
from .layout import Layout, appliance, load_layout, sandbox
from .privileged.permissions import AGENT_GROUP, SECRETS_GROUP, group_or_none
from .privileged.server import DEFAULT_ALLOWED, Operations, run_helper
from .privileged.wire import SetupReply
from .render.configs import render
from .state.docs import state_reference
from .state.load import format_loc, load_state_file
from .state.revisions import RevisionStore
from .store.credentials import CredentialStore, prepare_folder
from .store.db import Database
from .store.quarantine import Quarantine
from .store.users import Users, hash_password

# The daemons' entry points (the API, the filter, the policy service) are imported where
# they run: each pulls in its server libraries, which no other command needs to load.

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONFLICT = 3


def _layout(args: argparse.Namespace) -> Layout:
    return load_layout(Path(args.root) if getattr(args, "root", None) else None)


def _author(args: argparse.Namespace) -> str:
    return args.author or os.environ.get("SUDO_USER") or getpass.getuser()


# --- state ------------------------------------------------------------------------------


def cmd_state_validate(args: argparse.Namespace) -> int:
    for name in args.files:
        state = load_state_file(Path(name))
        print(f"{name}: valid (version {state.version}, {len(state.domains)} relay "
              f"domain{'s' if len(state.domains) != 1 else ''}, {len(state.rules)} rules)")
    return 0


def _flatten(data: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str, Any]]:
    if isinstance(data, dict) and data:
        return [item for k, v in data.items() for item in _flatten(v, (*prefix, k))]
    if isinstance(data, list) and data and all(isinstance(x, dict) for x in data):
        return [item for i, v in enumerate(data) for item in _flatten(v, (*prefix, i))]
    return [(format_loc(prefix), data)]


def cmd_state_show(args: argparse.Namespace) -> int:
    layout = _layout(args)
    path = Path(args.file) if args.file else layout.state_file
    state = load_state_file(path)
    data = state.model_dump(mode="json", by_alias=True, exclude_unset=args.non_default)
    rows = _flatten(data)
    if args.keys:
        wanted = []
        for key in args.keys:
            found = [(k, v) for k, v in rows if k == key or k.startswith((key + ".", key + "["))]
            if not found:
                raise MailwardenError(f"no setting named '{key}' (see docs/state.md)")
            wanted += found
        rows = wanted
    for key, value in rows:
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        text = text.removesuffix("\n...").removesuffix("...").strip()
        print(f"{key} = {text}")
    return 0


def cmd_state_history(args: argparse.Namespace) -> int:
    store = RevisionStore(_layout(args).revisions_dir)
    current = store.current()
    for revision in store.history():
        mark = "*" if revision.number == current else " "
        print(f"{mark}{revision.number:>5}  {revision.time}  {revision.author:<12}  "
              f"{revision.comment}")
    if current is None:
        print("no revisions yet: `mailwarden apply FILE` makes the first")
    return 0


def cmd_state_diff(args: argparse.Namespace) -> int:
    store = RevisionStore(_layout(args).revisions_dir)
    diff = store.diff(args.a, args.b)
    print(diff or f"revisions {args.a} and {args.b} are identical", end="" if diff else "\n")
    return 0


def cmd_state_rollback(args: argparse.Namespace) -> int:
    layout = _layout(args)
    store = RevisionStore(layout.revisions_dir)
    base = args.base if args.base is not None else store.current()
    result = rollback(args.number, layout=layout, controller=controller_for(layout),
                      author=_author(args), base=base)
    print(f"revision {result.revision.number} applied: {result.revision.comment}; "
          f"{len(result.changed)} files changed, reloaded: {', '.join(result.reloaded) or '-'}")
    return 0


# --- render / apply ---------------------------------------------------------------------


def cmd_render(args: argparse.Namespace) -> int:
    state = load_state_file(Path(args.state))
    out = Path(args.out)
    layout = sandbox(out) if args.layout == "sandbox" else appliance()
    files = render(state, layout, Path(args.templates) if args.templates else None)
    for f in files:
        # The appliance layout is rendered *into* out as well: a dry run never touches /.
        target = out / f.path.relative_to(layout.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f.content)
        print(target)
    if args.layout == "sandbox":
        (out / "layout.json").write_text(layout.to_json())
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    layout = _layout(args)
    store = RevisionStore(layout.revisions_dir)
    if args.file:
        text = Path(args.file).read_text(encoding="utf-8")
    else:
        text = layout.state_file.read_text(encoding="utf-8")
    # Without --base the change is taken as based on what is live now.
    base = args.base if args.base is not None else store.current()
    result = apply_state(text, layout=layout, controller=controller_for(layout),
                         author=_author(args), comment=args.comment, base=base,
                         force=args.force)
    print(f"revision {result.revision.number} applied; {len(result.changed)} files changed"
          f"{', reloaded: ' + ', '.join(result.reloaded) if result.reloaded else ''}")
    return 0


# --- docs -------------------------------------------------------------------------------


def cmd_docs_state(args: argparse.Namespace) -> int:
    text = state_reference()
    if args.check:
        current = Path(args.check).read_text(encoding="utf-8") if Path(args.check).exists() else ""
        if current != text:
            raise MailwardenError(f"{args.check} is out of date: run "
                                  f"`mailwarden docs state --out {args.check}`")
        print(f"{args.check} is current")
    elif args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


# --- quarantine -------------------------------------------------------------------------


def _quarantine(layout: Layout) -> Any:
    db = Database(layout.database)
    return Quarantine(db, layout.quarantine_dir)


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    import json

    entries = _quarantine(_layout(args)).list(
        kind=args.kind, recipient=args.recipient, sender=args.sender,
        status=None if args.all else "new", limit=args.limit)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return 0
    for e in entries:
        what = e.virus or (f"score {e.spam_score:.1f}" if e.spam_score is not None else "")
        print(f"{e.id}  {e.kind:<10} {e.sender or '<>'} -> {', '.join(e.recipients)}  "
              f"{what}  {e.message_id or ''}  {e.subject or ''}")
    return 0


def cmd_quarantine_show(args: argparse.Namespace) -> int:
    q = _quarantine(_layout(args))
    entry = q.get(args.id)
    if args.raw:
        sys.stdout.buffer.write(q.raw(args.id))
        return 0
    for key, value in entry.to_dict().items():
        print(f"{key}: {value}")
    return 0


def cmd_quarantine_release(args: argparse.Namespace) -> int:
    from .mail.reinject import reinject

    layout = _layout(args)
    state = load_state_file(layout.state_file)

    def deliver(raw: bytes, sender: str, recipients: list[str]) -> None:
        reinject(raw, sender, recipients, port=layout.ports.reinject,
                 hostname=state.system.hostname)

    released = _quarantine(layout).release(args.id, deliver, args.to or None)
    print(f"released to {', '.join(released)}" if released
          else "nothing to release (already released or deleted)")
    return 0


def _digests(layout: Layout) -> tuple[Any, Any, Callable[[bytes, str, list[str]], None]]:
    """(Digests, the state, how a digest is handed to Postfix) for the digest commands."""
    from .mail.digest import Digests
    from .mail.reinject import reinject
    from .store.tickets import Tickets

    state = load_state_file(layout.state_file)
    db = Database(layout.database)
    digests = Digests(db, Quarantine(db, layout.quarantine_dir), Tickets(layout.ticket_key))

    def send(raw: bytes, sender: str, recipients: list[str]) -> None:
        reinject(raw, sender, recipients, port=layout.ports.reinject,
                 hostname=state.system.hostname)

    return digests, state, send


def cmd_digest_run(args: argparse.Namespace) -> int:
    digests, state, send = _digests(_layout(args))
    results = digests.run(state, send)
    for recipient, result in results.items():
        print(f"{recipient}: {result}")
    failed = [r for r, result in results.items() if result != "sent"]
    if failed:
        # Not swallowed: the unit fails (and shows in the service health); the next run
        # tries these again.
        print(f"mailwarden: {len(failed)} digest(s) not sent [digest_failed]", file=sys.stderr)
        return EXIT_ERROR
    return 0


def cmd_digest_preview(args: argparse.Namespace) -> int:
    digests, state, _ = _digests(_layout(args))
    mail = digests.preview(state, args.address)
    if mail is None:
        print(f"nothing new was quarantined for {args.address} since their last digest")
        return 0
    if args.raw:
        sys.stdout.buffer.write(mail.message.as_bytes())
        return 0
    body = mail.message.get_body(("html",) if args.html else ("plain",))
    print(f"Subject: {mail.message['Subject']}\n")
    print(body.get_content() if body is not None else "")
    return 0


def cmd_digest_send(args: argparse.Namespace) -> int:
    digests, state, send = _digests(_layout(args))
    mail = digests.send(state, args.address, send)
    if mail is None:
        print(f"nothing new was quarantined for {args.address} since their last digest: "
              "nothing sent")
        return 0
    print(f"sent to {args.address}: {len(mail.items) + mail.more} message(s) listed")
    return 0


# --- notifications (mail/notify.py) ------------------------------------------------------


def _notifier(layout: Layout) -> tuple[Any, Any, Callable[[bytes, str, list[str]], None]]:
    """(Notifier, the state, how a notification is handed to Postfix)."""
    from .mail.notify import Notifier, Sources
    from .mail.reinject import reinject

    state = load_state_file(layout.state_file)
    sources = Sources(clamav_dir=layout.path("/var/lib/clamav"),
                      disks=(layout.database.parent, layout.quarantine_dir,
                             layout.path("/var/spool/postfix")))

    def send(raw: bytes, sender: str, recipients: list[str]) -> None:
        reinject(raw, sender, recipients, port=layout.ports.reinject,
                 hostname=state.system.hostname)

    return Notifier(Database(layout.database), sources), state, send


def cmd_notify_run(args: argparse.Namespace) -> int:
    from .control.service import service_status

    layout = _layout(args)
    notifier, state, send = _notifier(layout)
    results = notifier.run(state, send, lambda: service_status(layout))
    for name, result in results.items():
        print(f"{name}: {result}")
    failed = [n for n, result in results.items() if result not in ("sent", "nothing new")]
    if failed:
        # Not swallowed: the unit fails (and shows in the service health); the next run
        # tries again.
        print(f"mailwarden: {', '.join(failed)} not sent [notification_failed]",
              file=sys.stderr)
        return EXIT_ERROR
    return 0


def _print_notice(notice: Any, raw: bool) -> None:
    if raw:
        sys.stdout.buffer.write(notice.message.as_bytes())
        return
    print(f"To: {notice.message['To']}\nSubject: {notice.message['Subject']}\n")
    print(notice.message.get_content())


def cmd_notify_preview(args: argparse.Namespace) -> int:
    from .control.service import service_status

    layout = _layout(args)
    notifier, state, _ = _notifier(layout)
    if args.what == "report":
        _print_notice(notifier.report(state), args.raw)
        return 0
    check = notifier.alerts(state, service_status(layout))
    if check.notice is None:
        print("no new alert condition" + (
            f" ({len(check.current)} mailed before and still so)" if check.current else ""))
        return 0
    _print_notice(check.notice, args.raw)
    return 0


def cmd_notify_send_report(args: argparse.Namespace) -> int:
    notifier, state, send = _notifier(_layout(args))
    notice = notifier.send_report(state, send)
    print(f"sent the daily report to {', '.join(notice.recipients)}")
    return 0


def cmd_notify_test(args: argparse.Namespace) -> int:
    from .mail.notify import hand_over

    notifier, state, send = _notifier(_layout(args))
    notice = notifier.test_notice(state)
    hand_over(notice, state, send)
    print(f"sent a test notification to {', '.join(notice.recipients)}")
    return 0


# --- end of notifications -----------------------------------------------------------------


def _list_entry(recipient: str | None, sender: str, kind: str = "block") -> Any:
    """The API's own checks on a list entry, with its messages."""
    from pydantic import ValidationError

    from .api.bodies import ListEntry

    try:
        return ListEntry.model_validate({"recipient": recipient, "sender": sender,
                                         "kind": kind})
    except ValidationError as exc:
        problem = exc.errors()[0]
        said = problem.get("ctx", {}).get("error", problem["msg"])  # a ValueError's own words
        raise MailwardenError(f"{'.'.join(str(p) for p in problem['loc'])}: {said}") from None


def cmd_lists_show(args: argparse.Namespace) -> int:
    from .store.lists import UserLists

    if args.global_:
        return _global_lists_show(args)

    entries = UserLists(Database(_layout(args).database)).search(
        recipient=args.recipient, text=args.search, kind=args.kind, limit=args.limit)
    for e in entries:
        print(f"{e['recipient']}  {e['kind']:<5}  {e['sender']}")
    return 0


def cmd_lists_add(args: argparse.Namespace) -> int:
    from .store.lists import UserLists

    if _global_list_wanted(args):
        return _global_lists_add(args)

    entry = _list_entry(args.recipient, args.sender, args.kind)
    assert entry.recipient is not None
    UserLists(Database(_layout(args).database)).set(entry.recipient, entry.sender, entry.kind)
    print(f"{entry.sender.lower()}: {entry.kind} for {entry.recipient.lower()}")
    return 0


def cmd_lists_remove(args: argparse.Namespace) -> int:
    from .store.lists import UserLists

    if _global_list_wanted(args):
        return _global_lists_remove(args)

    entry = _list_entry(args.recipient, args.sender)
    assert entry.recipient is not None
    if not UserLists(Database(_layout(args).database)).remove(entry.recipient, entry.sender):
        print(f"mailwarden: {args.sender} is not on the list of {args.recipient} [not_found]",
              file=sys.stderr)
        return EXIT_ERROR
    print("removed")
    return 0


# --- global sender lists ---------------------------------------------------------------------


def _global_list_wanted(args: argparse.Namespace) -> bool:
    """--global, or a recipient: one of the two, never both."""
    if args.global_ and args.recipient is not None:
        raise MailwardenError("a global entry has no recipient: give --global or a recipient")
    if not args.global_ and args.recipient is None:
        raise MailwardenError("say whose list: a recipient, or --global for everyone's")
    return bool(args.global_)


def _global_lists_show(args: argparse.Namespace) -> int:
    from .store.lists import GlobalLists

    if args.recipient is not None:
        raise MailwardenError("--global and --recipient exclude each other")
    for e in GlobalLists(Database(_layout(args).database)).search(
            text=args.search, kind=args.kind, limit=args.limit):
        print(f"global  {e['kind']:<5}  {e['sender']}  (by {e['added_by']})")
    return 0


def _console_actor() -> str:
    return f"console:{os.environ.get('SUDO_USER') or getpass.getuser()}"


def _global_lists_add(args: argparse.Namespace) -> int:
    from .store.lists import GlobalLists

    entry = _list_entry(None, args.sender, args.kind)
    GlobalLists(Database(_layout(args).database)).set(entry.sender, entry.kind,
                                                      _console_actor())
    print(f"{entry.sender.lower()}: {entry.kind} for every recipient")
    return 0


def _global_lists_remove(args: argparse.Namespace) -> int:
    from .store.lists import GlobalLists

    entry = _list_entry(None, args.sender)
    if GlobalLists(Database(_layout(args).database)).remove(entry.sender) is None:
        print(f"mailwarden: {args.sender} is not on the global lists [not_found]",
              file=sys.stderr)
        return EXIT_ERROR
    print("removed")
    return 0


# --- end of global sender lists ---------------------------------------------------------------


def cmd_quarantine_delete(args: argparse.Namespace) -> int:
    _quarantine(_layout(args)).delete(args.id, args.to or None)
    print("deleted")
    return 0


# --- learning ---------------------------------------------------------------------------


def _learner(layout: Layout) -> Any:
    from .mail.learning import Learner

    return Learner(layout.ports.rspamd_controller, layout.ports.redis,
                   lambda: load_state_file(layout.state_file).spam.bayes)


def cmd_learn(args: argparse.Namespace) -> int:
    """Each file is one message or an mbox; every message learned on its own, the run
    recorded in the audit log like an upload in the web UI."""
    from .errors import LearnError
    from .mail.learning import split_mbox
    from .store.users import Audit

    layout = _layout(args)
    learner = _learner(layout)
    tally = {"learned": 0, "already_learned": 0, "failed": 0}
    for name in args.files:
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            # On the appliance this runs as the API's user (it owns the audit log).
            raise MailwardenError(f"cannot read {name}: {exc.strerror}; on the appliance "
                                  f"the file must be readable by {API_USER}") from None
        messages = split_mbox(data)
        for index, raw in enumerate(messages):
            where = name if len(messages) == 1 else f"{name} #{index + 1}"
            try:
                learned = learner.learn(raw, args.kind)
            except LearnError as exc:
                if exc.code == "bayes_disabled":
                    raise
                tally["failed"] += 1
                print(f"{where}: not learned: {exc.message} [{exc.code}]", file=sys.stderr)
                continue
            result = "already_learned" if learned.already else "learned"
            tally[result] += 1
            print(f"{where}: {result.replace('_', ' ')} as {args.kind}")
    total = sum(tally.values())
    Audit(CredentialStore.for_layout(layout)).record(
        _author(args), f"learn.{args.kind}", f"{total} uploaded",
        {"result": "learned" if not tally["failed"] else "partly", **tally, "via": "cli"})
    counts = learner.counts()
    print(f"Bayes has learned {counts.spam} spam and {counts.ham} ham")
    return EXIT_ERROR if tally["failed"] else 0


def cmd_learn_stats(args: argparse.Namespace) -> int:
    layout = _layout(args)
    bayes = load_state_file(layout.state_file).spam.bayes
    counts = _learner(layout).counts()
    print(f"spam: {counts.spam}\nham: {counts.ham}")
    state = "on" if bayes.enabled else "off"
    waiting = [kind for kind, n in (("spam", counts.spam), ("ham", counts.ham))
               if n < bayes.min_learns]
    print(f"bayes: {state}, autolearn {'on' if bayes.autolearn else 'off'}, scores after "
          f"{bayes.min_learns} of each" + (f" (needs more {' and '.join(waiting)})"
                                            if waiting and bayes.enabled else ""))
    return 0


# --- end of learning --------------------------------------------------------------------


# --- users ------------------------------------------------------------------------------


def _users(layout: Layout) -> Any:
    return Users(CredentialStore.for_layout(layout))


def _as_store_owner(args: argparse.Namespace, argv: Sequence[str]) -> int | None:
    """Root on the appliance: the user and DKIM key commands run again as the API's user, who
    owns the credentials store and the secrets folder (root writing there would leave files
    the API cannot open, and a DKIM key of root's is refused when a state names it). None: go
    on here."""
    layout = _layout(args)
    owner = api_owner() if layout.name == "appliance" else None
    if owner is None:
        return None
    import subprocess

    prepare_folder(layout.auth_database, API_USER)
    uid, gid = owner
    return subprocess.run([sys.executable, "-m", "mailwarden.cli", *argv], check=False,
                          user=uid, group=gid, extra_groups=[],
                          cwd="/").returncode


def _new_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("new password: ")
    if getpass.getpass("again: ") != first:
        raise MailwardenError("the passwords differ")
    return first


def cmd_user_add(args: argparse.Namespace) -> int:
    users = _users(_layout(args))
    if args.password_hash_stdin:
        # First boot's seed carries only the hash; it arrives here on standard input.
        user = users.add_hashed(args.username, sys.stdin.readline().strip(), args.role,
                                replace=args.replace)
    elif args.replace:
        raise MailwardenError("--replace goes with --password-hash-stdin")
    else:
        user = users.add(args.username, _new_password(args), args.role)
    print(f"user {user.username} added with role {user.role}")
    return 0


def cmd_user_passwd(args: argparse.Namespace) -> int:
    _users(_layout(args)).set_password(args.username, _new_password(args))
    print(f"password of {args.username} changed; their sessions ended")
    return 0


def cmd_user_del(args: argparse.Namespace) -> int:
    _users(_layout(args)).delete(args.username)
    print(f"user {args.username} deleted")
    return 0


def cmd_user_hash_password(args: argparse.Namespace) -> int:
    # For seed files: the answer file carries this hash, never the password itself.
    print(hash_password(_new_password(args)))
    return 0


def cmd_setup_code(args: argparse.Namespace) -> int:
    layout = _layout(args)
    if is_set_up(layout):
        raise AlreadySetUp("the appliance is set up; the web wizard is closed "
                           "(`mailwarden user passwd admin` resets a lost password)")

    # Root at the console: the code must still be the web wizard's (the API's user) to read.
    print(setupcode.issue(layout.setup_code, api_owner() if layout.name == "appliance" else None))
    return 0


def cmd_adopt_setup(args: argparse.Namespace) -> int:
    layout = _layout(args)
    if layout.name == "appliance" and os.geteuid() != 0:
        raise MailwardenError("only root writes the set-up marker")
    # Before the API's first start on an upgraded appliance: the decision rests on stores the
    # API's user can write, so it is taken before that user's code has run.
    print("set up" if adopt_earlier_setup(layout) else "not set up")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    for user in _users(_layout(args)).list():
        aliases = [a for a in user.addresses if a != user.username.lower()]
        print(f"{user.username:<24} {user.role:<10} {'totp' if user.totp else '':<4} "
              f"{' '.join(aliases)}".rstrip())
    return 0


def cmd_user_address(args: argparse.Namespace) -> int:
    users = _users(_layout(args))
    if args.address_command == "add":
        user = users.attach(args.username, args.address)
    else:
        user = users.detach(args.username, args.address)
    print(f"{user.username}: {' '.join(user.addresses)}")
    return 0


def cmd_dkim_generate(args: argparse.Namespace) -> int:
    from .mail.dkim import generate_key

    info = generate_key(_layout(args), args.domain, args.selector, bits=args.bits,
                        key_name=args.key_name, force=args.force)
    print(f"private key written to {info.path} (mode 0600)")
    print("publish this DNS record:")
    print(info.record)
    print("then add to the state:")
    print(f"  dkim:\n    sign:\n      - {{domain: {info.domain}, selector: {info.selector}, "
          f"key: {info.key_name}}}")
    return 0


def cmd_rules_simulate(args: argparse.Namespace) -> int:
    import json

    from .mail.simulate import simulate
    from .mail.types import Envelope, ScanResult, SpamResult, VirusResult

    layout = _layout(args)
    state = load_state_file(Path(args.state) if args.state else layout.state_file)
    raw = Path(args.message).read_bytes()
    scan = None
    if args.score is not None or args.virus:
        scan = ScanResult(spam=SpamResult(score=args.score or 0.0),
                          virus=VirusResult(virus=args.virus))
    envelope = Envelope(sender=args.sender, recipients=tuple(args.to), direction=args.direction,
                        client_ip=args.client_ip)
    report = simulate(state, raw, envelope, scan=scan)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_text())
    return 0


def cmd_firstboot(args: argparse.Namespace) -> int:
    layout = _layout(args)
    find = None
    if args.seed:
        path = Path(args.seed)
        text = path.read_text(encoding="utf-8")

        def find() -> Seed:
            return Seed(str(path), text)

    host = ApplianceHost(layout=layout) if layout.name == "appliance" else NullHost()
    outcome = run_firstboot(layout, controller=controller_for(layout), host=host, find=find,
                            live=layout.name == "appliance",
                            skip_identity=args.skip_identity or layout.name != "appliance")
    return EXIT_ERROR if outcome.errors else 0


def cmd_console(args: argparse.Namespace) -> int:
    from .console.menu import run_console
    from .console.terminal import Hangup, Terminal

    layout = _layout(args)
    if layout.name == "appliance" and os.geteuid() != 0:
        raise MailwardenError("the console applies settings: run it as root")
    # A sandbox's console writes the host's files under the sandbox's root, touching nothing
    # live: what it would do to a real machine can be looked at there.
    host = ApplianceHost(layout=layout) if layout.name == "appliance" else \
        ApplianceHost(layout.root, live=False, layout=layout)
    try:
        run_console(layout, controller=controller_for(layout), host=host,
                    term=Terminal(sys.stdin, sys.stdout), live=layout.name == "appliance")
    except Hangup:
        return 0
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from .console.terminal import Hangup, Terminal
    from .install.installer import Options, options_from_cmdline, run_installer

    if os.geteuid() != 0:
        raise MailwardenError("the installer partitions disks: run it as root")
    if args.from_kernel_cmdline:
        options = options_from_cmdline(Path("/proc/cmdline").read_text())
    else:
        options = Options(args.mode, args.answers)
    try:
        return run_installer(options, Terminal(sys.stdin, sys.stdout))
    except Hangup:
        return 0


def helper_operations(layout: Layout, *, controller: Controller | None = None,
                      host_factory: Callable[[], Host] | None = None,
                      secrets_group: str | None = None, agent_group: str | None = None,
                      after_first_state: Callable[[], None] | None = None) -> Operations:
    """The apply helper's operations: the transactions, and the first-run setup, which
    belongs to firstboot (a layer above the helper, so it is put together here). The
    appliance binds them to systemd, the real host and the agent's groups; tests to a
    sandbox."""
    controller = controller if controller is not None else controller_for(layout)
    if layout.name == "appliance":
        host_factory = host_factory or (lambda: ApplianceHost(layout=layout))
        secrets_group = secrets_group or group_or_none(SECRETS_GROUP)
        agent_group = agent_group or group_or_none(AGENT_GROUP)
        after_first_state = after_first_state or (lambda: open_mail_path(layout))
    make_host: Callable[[], Host] = host_factory or NullHost

    def setup(data: Any, author: str) -> SetupReply:
        answers = validate_answers(data, "answers")
        # Decided by root's marker alone; no store the caller can write has a say.
        if adopt_earlier_setup(layout):
            raise AlreadySetUp("this appliance is set up already")
        first = RevisionStore(layout.revisions_dir).current() is None
        outcome = apply_answers(answers, layout=layout, controller=controller,
                                host=make_host(), author=author)
        if first and after_first_state is not None:
            after_first_state()
        return SetupReply(outcome.applied, outcome.admin)

    return Operations(layout=layout, controller=controller, setup=setup,
                      secrets_group=secrets_group, agent_group=agent_group)


def cmd_apply_helper(args: argparse.Namespace) -> int:
    layout = _layout(args)
    if layout.name == "appliance" and os.geteuid() == 0:
        adopt_earlier_setup(layout)  # the API unit did it before its start; never too often
    return run_helper(helper_operations(layout),
                      socket_path=Path(args.socket) if args.socket else None,
                      allowed=args.allow or DEFAULT_ALLOWED, idle_timeout=args.idle)


def cmd_quarantine_expire(args: argparse.Namespace) -> int:
    removed = _quarantine(_layout(args)).expire()
    print(f"{removed} expired quarantine entr{'y' if removed == 1 else 'ies'} removed")
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    from .api.serve import run_api

    return run_api(_layout(args), workers=args.workers, threads=args.threads)


def cmd_filter(args: argparse.Namespace) -> int:
    from .mail.service import run_filter

    return run_filter(_layout(args))


def cmd_policy(args: argparse.Namespace) -> int:
    from .mail.policy import run_policy

    return run_policy(_layout(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailwarden", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def root_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--root", help="a sandbox folder (default: the appliance, /)")

    state = sub.add_parser("state", help="validate, show and version the state").add_subparsers(
        dest="state_command", required=True)
    p = state.add_parser("validate", help="check state files; every error with its path")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_state_validate)
    p = state.add_parser("show", help="effective settings, like postconf")
    p.add_argument("keys", nargs="*", help="settings to show, e.g. spam.levels")
    p.add_argument("-n", "--non-default", action="store_true", help="only what the file sets")
    p.add_argument("--file", help="a state file instead of the live one")
    root_option(p)
    p.set_defaults(func=cmd_state_show)
    p = state.add_parser("history", help="applied revisions")
    root_option(p)
    p.set_defaults(func=cmd_state_history)
    p = state.add_parser("diff", help="what changed between two revisions")
    p.add_argument("a", type=int)
    p.add_argument("b", type=int)
    root_option(p)
    p.set_defaults(func=cmd_state_diff)
    p = state.add_parser("rollback", help="apply an earlier revision again")
    p.add_argument("number", type=int)
    p.add_argument("--base", type=int, help="fail unless this revision is live")
    p.add_argument("--author")
    root_option(p)
    p.set_defaults(func=cmd_state_rollback)

    p = sub.add_parser("render", help="render every service's config into a folder (dry run)")
    p.add_argument("--state", required=True)
    p.add_argument("--layout", choices=["sandbox", "appliance"], default="sandbox")
    p.add_argument("--out", required=True)
    p.add_argument("--templates", help="template override folder")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("apply", help="make a state live: validate, check, swap, reload")
    p.add_argument("file", nargs="?", help="new state (default: re-apply the live one)")
    p.add_argument("-m", "--comment", default="", help="why (kept in the history)")
    p.add_argument("--author")
    p.add_argument("--base", type=int, help="the revision this change started from")
    p.add_argument("--force", action="store_true", help="overwrite hand-edited files")
    root_option(p)
    p.set_defaults(func=cmd_apply)

    docs = sub.add_parser("docs", help="generated documentation").add_subparsers(
        dest="docs_command", required=True)
    p = docs.add_parser("state", help="the state file reference (docs/state.md)")
    p.add_argument("--check", metavar="FILE", help="fail if FILE is not current")
    p.add_argument("--out", metavar="FILE")
    p.set_defaults(func=cmd_docs_state)

    quarantine = sub.add_parser("quarantine", help="quarantined mail").add_subparsers(
        dest="quarantine_command", required=True)
    p = quarantine.add_parser("list", help="waiting messages, newest first")
    p.add_argument("--kind", choices=["spam", "virus", "attachment", "blocked"])
    p.add_argument("--recipient")
    p.add_argument("--sender")
    p.add_argument("--all", action="store_true", help="also released and deleted ones")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    root_option(p)
    p.set_defaults(func=cmd_quarantine_list)
    p = quarantine.add_parser("show", help="one message's details (or --raw)")
    p.add_argument("id")
    p.add_argument("--raw", action="store_true")
    root_option(p)
    p.set_defaults(func=cmd_quarantine_show)
    p = quarantine.add_parser("release", help="deliver it (exactly once per recipient)")
    p.add_argument("id")
    p.add_argument("--to", action="append", help="only these recipients (repeatable)")
    root_option(p)
    p.set_defaults(func=cmd_quarantine_release)
    p = quarantine.add_parser("expire", help="remove entries past their lifetime "
                              "(mailwarden-quarantine-expire.timer)")
    root_option(p)
    p.set_defaults(func=cmd_quarantine_expire)
    p = quarantine.add_parser("delete", help="delete it")
    p.add_argument("id")
    p.add_argument("--to", action="append", help="only for these recipients (repeatable)")
    root_option(p)
    p.set_defaults(func=cmd_quarantine_delete)

    lists = sub.add_parser("lists", help="sender allow and block lists, per recipient and "
                           "global").add_subparsers(dest="lists_command", required=True)
    p = lists.add_parser("show", help="entries, by recipient then sender")
    p.add_argument("--recipient", help="one recipient's list")
    p.add_argument("--global", dest="global_", action="store_true",
                   help="the global lists (every recipient's) instead")
    p.add_argument("--search", help="a piece of the sender or recipient")
    p.add_argument("--kind", choices=["allow", "block"])
    p.add_argument("--limit", type=int, default=1000)
    root_option(p)
    p.set_defaults(func=cmd_lists_show)
    p = lists.add_parser("add", help="allow or block a sender (an address, or @domain) for a "
                         "recipient, or --global for every recipient")
    p.add_argument("--global", dest="global_", action="store_true",
                   help="on the global lists (then no recipient)")
    p.add_argument("recipient", nargs="?")
    p.add_argument("sender")
    p.add_argument("kind", choices=["allow", "block"])
    root_option(p)
    p.set_defaults(func=cmd_lists_add)
    p = lists.add_parser("remove", help="take a sender off a recipient's list, or --global "
                         "off the global lists")
    p.add_argument("--global", dest="global_", action="store_true",
                   help="off the global lists (then no recipient)")
    p.add_argument("recipient", nargs="?")
    p.add_argument("sender")
    root_option(p)
    p.set_defaults(func=cmd_lists_remove)

    digest = sub.add_parser("digest", help="quarantine digests to recipients").add_subparsers(
        dest="digest_command", required=True)
    p = digest.add_parser("run", help="send every digest that is due "
                          "(mailwarden-digest.timer)")
    root_option(p)
    p.set_defaults(func=cmd_digest_run)
    p = digest.add_parser("preview", help="the digest an address would get now (not sent)")
    p.add_argument("address")
    p.add_argument("--html", action="store_true", help="the HTML part instead of the text")
    p.add_argument("--raw", action="store_true", help="the whole message as it would go out")
    root_option(p)
    p.set_defaults(func=cmd_digest_preview)
    p = digest.add_parser("send", help="send an address its digest now")
    p.add_argument("address")
    root_option(p)
    p.set_defaults(func=cmd_digest_send)

    # --- notifications ---
    notify = sub.add_parser("notify", help="notifications to the administrators"
                            ).add_subparsers(dest="notify_command", required=True)
    p = notify.add_parser("run", help="send the daily report and service alerts that are due "
                          "(mailwarden-notify.timer)")
    root_option(p)
    p.set_defaults(func=cmd_notify_run)
    p = notify.add_parser("preview", help="the report, or the alert mail, as it would go out "
                          "now (not sent, nothing recorded)")
    p.add_argument("what", choices=["report", "alerts"])
    p.add_argument("--raw", action="store_true", help="the whole message as it would go out")
    root_option(p)
    p.set_defaults(func=cmd_notify_preview)
    p = notify.add_parser("send-report", help="send the daily report now")
    root_option(p)
    p.set_defaults(func=cmd_notify_send_report)
    p = notify.add_parser("test", help="send a test notification to the recipients")
    root_option(p)
    p.set_defaults(func=cmd_notify_test)
    # --- end of notifications ---
    # --- learning ---
    learn = sub.add_parser("learn", help="teach Rspamd's Bayes spam and ham; its counts"
                           ).add_subparsers(dest="learn_command", required=True)
    for kind in ("spam", "ham"):
        p = learn.add_parser(kind, help=f"learn messages as {kind} (each file one message "
                             "or an mbox)")
        p.add_argument("files", nargs="+", metavar="FILE")
        p.add_argument("--author", help="who, for the audit log (default: the login user)")
        root_option(p)
        p.set_defaults(func=cmd_learn, kind=kind)
    p = learn.add_parser("stats", help="messages learned as spam and ham")
    root_option(p)
    p.set_defaults(func=cmd_learn_stats)
    # --- end of learning ---

    users = sub.add_parser("user", help="API and web UI users (first admin, recovery)"
                           ).add_subparsers(dest="user_command", required=True)
    for name, func, helptext in (("add", cmd_user_add, "create a user"),
                                 ("passwd", cmd_user_passwd, "set a new password"),
                                 ("del", cmd_user_del, "delete a user")):
        p = users.add_parser(name, help=helptext)
        p.add_argument("username")
        if name == "add":
            p.add_argument("--role", default="admin",
                           choices=["admin", "qmanager", "audit", "helpdesk", "quser"])
            p.add_argument("--password-hash-stdin", action="store_true",
                           help="read an argon2 hash instead of a password (first boot)")
            p.add_argument("--replace", action="store_true",
                           help="with --password-hash-stdin: replace a user of that name")
        if name != "del":
            p.add_argument("--password-stdin", action="store_true",
                           help="read the password from standard input (scripts)")
        root_option(p)
        p.set_defaults(func=func)
    for action, helptext in (("address-add", "give a quarantine user one more address "
                              "(an alias: its mail shows in their quarantine)"),
                             ("address-remove", "take an alias away from a quarantine user")):
        p = users.add_parser(action, help=helptext)
        p.add_argument("username")
        p.add_argument("address")
        root_option(p)
        p.set_defaults(func=cmd_user_address, address_command=action.partition("-")[2])
    p = users.add_parser("list", help="users and roles")
    root_option(p)
    p.set_defaults(func=cmd_user_list)
    p = users.add_parser("hash-password", help="print a password's argon2 hash (seed files)")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from standard input (scripts)")
    p.set_defaults(func=cmd_user_hash_password)

    p = sub.add_parser("adopt-setup", help="root: mark an appliance set up by an earlier "
                       "version (revisions and an admin) as set up")
    root_option(p)
    p.set_defaults(func=cmd_adopt_setup)

    p = sub.add_parser("setup-code", help="a new one-time code for the first-run web wizard")
    root_option(p)
    p.set_defaults(func=cmd_setup_code)

    rules = sub.add_parser("rules", help="the rule engine").add_subparsers(dest="rules_command",
                                                                         required=True)
    p = rules.add_parser("simulate", help="which rules a message would match, and why")
    p.add_argument("message", help="an .eml file")
    p.add_argument("--from", dest="sender", default="", help="envelope sender")
    p.add_argument("--to", action="append", required=True, help="recipient (repeatable)")
    p.add_argument("--direction", choices=["in", "out"], default="in")
    p.add_argument("--client-ip")
    p.add_argument("--score", type=float, help="assume this spam score (default: 0)")
    p.add_argument("--virus", help="assume this virus was found")
    p.add_argument("--state", help="a state file instead of the live one")
    p.add_argument("--json", action="store_true")
    root_option(p)
    p.set_defaults(func=cmd_rules_simulate)

    dkim = sub.add_parser("dkim", help="DKIM keys").add_subparsers(dest="dkim_command",
                                                                   required=True)
    p = dkim.add_parser("generate", help="write a signing key and print its DNS record")
    p.add_argument("domain")
    p.add_argument("selector")
    p.add_argument("--bits", type=int, default=2048)
    p.add_argument("--key-name", help="file name in the secrets folder")
    p.add_argument("--force", action="store_true", help="replace an existing key")
    root_option(p)
    p.set_defaults(func=cmd_dkim_generate)

    p = sub.add_parser("api", help="serve the API and web UI over HTTPS (gunicorn)")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--threads", type=int, default=8, help="request threads per worker")
    root_option(p)
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("filter", help="run the content filter daemon (10023/10024)")
    root_option(p)
    p.set_defaults(func=cmd_filter)
    p = sub.add_parser("policy", help="run the policy service daemon (10022)")
    root_option(p)
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("firstboot", help="first boot: machine identity, the seed, the setup "
                       "code (mailwarden-firstboot.service)")
    p.add_argument("--seed", help="an answer file instead of looking for a seed volume")
    p.add_argument("--skip-identity", action="store_true",
                   help="keep machine-id, host keys and certificates")
    root_option(p)
    p.set_defaults(func=cmd_firstboot)
    p = sub.add_parser("console", help="root: the first-boot wizard, then the menu, on a "
                       "terminal (tty1 and ttyS0, in place of their getty)")
    root_option(p)
    p.set_defaults(func=cmd_console)
    p = sub.add_parser("install", help="root, on the installer ISO's live system: write the "
                       "appliance to a disk (mailwarden-install.service)")
    p.add_argument("--mode", choices=["interactive", "unattended", "shell"],
                   default="interactive")
    p.add_argument("--answers", metavar="URL", help="fetch the answer file from here")
    p.add_argument("--from-kernel-cmdline", action="store_true",
                   help="mode and URL from mailwarden.install= and mailwarden.answers=")
    p.set_defaults(func=cmd_install)
    p = sub.add_parser("apply-helper", help="the root service that applies states for the API "
                       "(mailwarden-apply.socket)")
    p.add_argument("--socket", help="listen here instead of the socket systemd passes")
    p.add_argument("--allow", action="append", metavar="USER",
                   help="a user who may connect (repeatable; default: mailwarden-api, root)")
    p.add_argument("--idle", type=float, default=60.0,
                   help="exit after this many idle seconds (0: never)")
    root_option(p)
    p.set_defaults(func=cmd_apply_helper)

    return parser


def _headline(exc: MailwardenError) -> str:
    """The code goes on the first line, where a script (or a person) looks for it."""
    first, _, rest = exc.message.partition("\n")
    return f"mailwarden: {first} [{exc.code}]" + (f"\n{rest}" if rest else "")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # Keys and credentials belong to the API's user: root at the console makes them as it.
        # The digests' links are signed with a key of the API's user's: so are their commands.
        if (args.command == "user" and args.user_command != "hash-password") or \
                (args.command == "dkim" and args.dkim_command == "generate") or \
                args.command == "digest" or \
                (args.command == "learn" and args.learn_command != "stats"):
            code = _as_store_owner(args, sys.argv[1:] if argv is None else argv)
            if code is not None:
                return code
        return int(args.func(args))
    except StateError as exc:
        print(f"mailwarden: {exc.source}: {len(exc.errors)} error"
              f"{'s' if len(exc.errors) != 1 else ''} [{exc.code}]", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return EXIT_ERROR
    except ConflictError as exc:
        print(_headline(exc), file=sys.stderr)
        return EXIT_CONFLICT
    except MailwardenError as exc:
        print(_headline(exc), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
