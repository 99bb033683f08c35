"""What clamd is sent: nothing for plain text only (virus.skip_plain_text), the decoded parts
that can carry malware (virus.scan = parts), the whole message when our parser is unsure."""

from __future__ import annotations

import base64

from mailwarden.mail.message import ParsedMessage, parse_message, scan_targets
from mailwarden.state.schema import Virus

HEAD = b"From: a@sender.test\r\nTo: u@example.test\r\nSubject: s\r\n"


def plain_text_only(message: ParsedMessage) -> bool:
    return scan_targets(message) == []


def _mixed(*parts: bytes) -> bytes:
    body = b"".join(b"--b\r\n" + p + b"\r\n" for p in parts)
    return (HEAD + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
            + body + b"--b--\r\n")


def test_plain_text_is_skipped() -> None:
    assert plain_text_only(parse_message(HEAD + b"\r\nhello\r\n"))
    assert plain_text_only(parse_message(
        HEAD + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: "
        b"quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe\r\n"))
    # Two inline text parts are still plain text.
    assert plain_text_only(parse_message(_mixed(b"\r\none", b"Content-Type: text/plain\r\n"
                                                b"Content-Disposition: inline\r\n\r\ntwo")))


def test_text_and_html_is_scanned() -> None:
    raw = (HEAD + b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n\r\ntext\r\n"
           b"--b\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--b--\r\n")
    assert not plain_text_only(parse_message(raw))
    assert not plain_text_only(parse_message(HEAD + b"Content-Type: text/html\r\n\r\n<p>x\r\n"))


def test_attachments_are_scanned() -> None:
    pdf = base64.b64encode(b"%PDF-1.4 ...")
    assert not plain_text_only(parse_message(_mixed(
        b"\r\nsee attached", b"Content-Type: application/pdf; name=a.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + pdf)))
    # A text part that is an attachment, by disposition or by file name.
    assert not plain_text_only(parse_message(_mixed(
        b"\r\nx", b"Content-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\ny")))
    assert not plain_text_only(parse_message(_mixed(
        b"\r\nx", b"Content-Type: text/plain; name=notes.txt\r\n\r\ny")))
    # Declared text, but the bytes are a Windows program.
    exe = base64.b64encode(b"MZ" + b"\0" * 64)
    assert not plain_text_only(parse_message(
        HEAD + b"Content-Transfer-Encoding: base64\r\n\r\n" + exe + b"\r\n"))


def test_uuencoded_files_are_scanned_whole() -> None:
    # clamd's mail parser decodes these out of a body: it gets the whole message.
    uu = b"begin 644 eicar.com\r\nM6#5/(5`E0$%06S1<4%I8-30H4%Ha\r\n`\r\nend\r\n"
    assert scan_targets(parse_message(HEAD + b"\r\nhere it is\r\n" + uu)) is None
    assert scan_targets(parse_message(HEAD + b"\r\n=ybegin line=128 size=9 name=a\r\n")) is None
    # Also when the text is base64-encoded (the check reads the decoded part).
    assert scan_targets(parse_message(
        HEAD + b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(uu))) is None
    # "begin" in a sentence is not a uuencoded file.
    assert plain_text_only(parse_message(HEAD + b"\r\nbegin at nine, 2028 at the latest\r\n"
                                                b"we begin 644 tasks\r\n"))


def test_defective_messages_are_scanned_whole() -> None:
    no_close = (HEAD + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n"
                b"text only\r\n")
    assert parse_message(no_close).defects
    assert scan_targets(parse_message(no_close)) is None
    bad_header = HEAD + b"not a header line\r\n\r\nbody\r\n"
    assert scan_targets(parse_message(bad_header)) is None


def test_parts_sent_are_the_decoded_ones_that_can_carry_malware() -> None:
    exe = b"MZ" + b"\0" * 64
    raw = _mixed(b"\r\nsee attached",
                 b"Content-Type: text/html\r\n\r\n<p>hi</p>",
                 b"Content-Type: application/octet-stream; name=a.exe\r\n"
                 b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(exe),
                 b"Content-Type: application/pdf; name=empty.pdf\r\n\r\n")
    targets = scan_targets(parse_message(raw))
    assert targets is not None
    # The inline text is left out; the HTML and the program go decoded; an empty part is no
    # file at all.
    assert [(t.index, t.payload) for t in targets] == [("2", b"<p>hi</p>"), ("3", exe)]


def test_the_settings_are_on_by_default() -> None:
    assert Virus().skip_plain_text is True
    assert Virus().scan == "parts"
