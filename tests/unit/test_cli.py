"""The command line: exit status, messages for people, codes for scripts."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailwarden.cli import EXIT_CONFLICT, main
from mailwarden.state.revisions import RevisionStore

MINIMAL = """\
version: 1
system:
  hostname: mx1.example.org
networks:
  trusted: [192.168.10.0/24, "2001:db8:10::/48"]
domains:
  - name: example.org
    transport: {host: 192.168.10.5}
"""


def write(tmp_path: Path, text: str, name: str = "state.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_validate_accepts_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["state", "validate", str(write(tmp_path, MINIMAL))]) == 0
    assert "valid (version 4, 1 relay domain" in capsys.readouterr().out


def test_validate_reports_every_error_with_path_and_code(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = MINIMAL.replace("{host: 192.168.10.5}", "{host: 192.168.10.5, port: 0}").replace(
        "hostname: mx1.example.org", "hostname: mx1\n  colour: blue")
    assert main(["state", "validate", str(write(tmp_path, bad))]) == 1
    err = capsys.readouterr().err
    assert "3 errors [state_invalid]" in err
    assert "system.hostname (line 3): 'mx1' must be a fully qualified name" in err
    assert "domains[0].transport.port (line 9): must be 1..65535" in err
    assert "system.colour (line 4): unknown key (allowed: hostname, admin_email, dns)" in err


def test_validate_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["state", "validate", str(tmp_path / "nope.yaml")]) == 1
    assert "file not found" in capsys.readouterr().err


def test_show_like_postconf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(write(tmp_path, MINIMAL))
    assert main(["state", "show", "--file", path, "spam.levels", "mail.max_size_mb"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["spam.levels.tag = 6.0", "spam.levels.quarantine = 10.0",
                   "spam.levels.reject = 15.0", "mail.max_size_mb = 25"]
    assert main(["state", "show", "-n", "--file", path]) == 0
    non_default = capsys.readouterr().out
    assert "system.hostname = mx1.example.org" in non_default
    assert "spam" not in non_default
    assert main(["state", "show", "--file", path, "spam.nope"]) == 1
    assert "no setting named 'spam.nope'" in capsys.readouterr().err


def test_render_writes_every_file_without_touching_the_system(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["render", "--state", str(write(tmp_path, MINIMAL)), "--layout", "appliance",
                 "--out", str(out)]) == 0
    main_cf = (out / "etc/postfix/main.cf").read_text()
    assert "mynetworks = 127.0.0.0/8 [::1]/128 192.168.10.0/24 [2001:db8:10::]/48" in main_cf
    assert "inet_interfaces = all" in main_cf
    assert (out / "etc/unbound/unbound.conf").exists()


def test_history_and_diff_of_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "sb"
    (root / "var/lib/mailwarden").mkdir(parents=True)
    from mailwarden.layout import sandbox

    layout = sandbox(root)
    (root / "layout.json").write_text(layout.to_json())
    store = RevisionStore(layout.revisions_dir)
    store.record(MINIMAL, "alice", "first", {})
    store.record(MINIMAL.replace("192.168.10.5", "192.168.10.6"), "bob", "move server", {})
    assert main(["state", "history", "--root", str(root)]) == 0
    history = capsys.readouterr().out
    assert "alice" in history and "*    2" in history and "move server" in history
    assert main(["state", "diff", "1", "2", "--root", str(root)]) == 0
    diff = capsys.readouterr().out
    assert "-    transport: {host: 192.168.10.5}" in diff
    assert "+    transport: {host: 192.168.10.6}" in diff
    assert main(["state", "diff", "1", "9", "--root", str(root)]) == 1
    assert "there is no revision 9 [revision_not_found]" in capsys.readouterr().err


def test_stale_base_exits_with_conflict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "sb"
    from mailwarden.layout import sandbox

    layout = sandbox(root)
    root.mkdir(exist_ok=True)
    (root / "layout.json").write_text(layout.to_json())
    store = RevisionStore(layout.revisions_dir)
    store.record(MINIMAL, "alice", "first", {})
    store.record(MINIMAL, "alice", "second", {})
    layout.secrets_dir.mkdir(parents=True)
    for name in ("smtp.crt", "smtp.key"):
        (layout.secrets_dir / name).write_text("x")
    path = str(write(tmp_path, MINIMAL, "new.yaml"))
    assert main(["apply", path, "--base", "1", "--root", str(root)]) == EXIT_CONFLICT
    assert "based on revision 1 but revision 2 is live; review what changed and try again " \
        "[conflict]" in capsys.readouterr().err


def test_user_add_passwd_del(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from mailwarden.layout import sandbox

    root = tmp_path / "sb"
    root.mkdir()
    (root / "layout.json").write_text(sandbox(root).to_json())
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert main(["user", "add", "alice", "--role", "qmanager", "--password-stdin",
                 "--root", str(root)]) == 0
    assert main(["user", "list", "--root", str(root)]) == 0
    assert "alice" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["user", "passwd", "alice", "--password-stdin", "--root", str(root)]) == 1
    assert "at least 10 characters [store_error]" in capsys.readouterr().err
    assert main(["user", "del", "alice", "--root", str(root)]) == 0
    assert main(["user", "del", "alice", "--root", str(root)]) == 1
    assert "no user 'alice' [not_found]" in capsys.readouterr().err


def test_lists_add_show_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mailwarden.layout import sandbox

    root = tmp_path / "sb"
    root.mkdir()
    (root / "layout.json").write_text(sandbox(root).to_json())
    at = ["--root", str(root)]
    assert main(["lists", "add", "Bob@example.org", "@Spam.example", "block", *at]) == 0
    assert main(["lists", "add", "ann@example.org", "boss@work.example", "allow", *at]) == 0
    capsys.readouterr()
    assert main(["lists", "show", "--search", "spam", *at]) == 0
    assert capsys.readouterr().out.split() == ["bob@example.org", "block", "@spam.example"]
    assert main(["lists", "add", "bob@example.org", "not-an-address", "allow", *at]) == 1
    assert "sender" in capsys.readouterr().err
    assert main(["lists", "remove", "bob@example.org", "@spam.example", *at]) == 0
    assert main(["lists", "remove", "bob@example.org", "@spam.example", *at]) == 1
    assert "[not_found]" in capsys.readouterr().err
    assert main(["lists", "show", "--recipient", "bob@example.org", *at]) == 0
    assert capsys.readouterr().out == ""
