"""Which messages clamd need not see (virus.skip_plain_text): plain text only, nothing else."""

from __future__ import annotations

import base64

from mailwarden.mail.message import parse_message, plain_text_only
from mailwarden.state.schema import Virus

HEAD = b"From: a@sender.test\r\nTo: u@example.test\r\nSubject: s\r\n"


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


def test_uuencoded_files_are_scanned() -> None:
    uu = b"begin 644 eicar.com\r\nM6#5/(5`E0$%06S1<4%I8-30H4%Ha\r\n`\r\nend\r\n"
    assert not plain_text_only(parse_message(HEAD + b"\r\nhere it is\r\n" + uu))
    assert not plain_text_only(parse_message(HEAD + b"\r\n=ybegin line=128 size=9 name=a\r\n"))
    # "begin" in a sentence is not a uuencoded file.
    assert plain_text_only(parse_message(HEAD + b"\r\nbegin at nine, 2028 at the latest\r\n"
                                                b"we begin 644 tasks\r\n"))


def test_defective_messages_are_scanned() -> None:
    no_close = (HEAD + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n"
                b"text only\r\n")
    assert parse_message(no_close).defects
    assert not plain_text_only(parse_message(no_close))
    bad_header = HEAD + b"not a header line\r\n\r\nbody\r\n"
    assert not plain_text_only(parse_message(bad_header))


def test_the_setting_is_on_by_default() -> None:
    assert Virus().skip_plain_text is True
