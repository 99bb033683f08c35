"""The structure shortcut in mail/message.py gives what the stdlib's parser gives, or steps
aside: every message here is parsed both ways and the results compared field by field."""

from __future__ import annotations

import base64
import io
import zipfile

import pytest

from mailwarden.mail import message as mail_message


def _stdlib_only(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> mail_message.ParsedMessage:
    with monkeypatch.context() as patch:
        patch.setattr(mail_message, "_fast_tree", lambda _raw: None)
        return mail_message.parse_message(raw)


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("invoice.exe", b"MZ" + b"\0" * 100)
    return buffer.getvalue()


ZIP64 = base64.encodebytes(_zip()).replace(b"\n", b"\r\n")
CASES: dict[str, tuple[bytes, bool]] = {  # name: (message, the shortcut applies)
    "plain": (b"From: a@x.test\r\nSubject: hi\r\n\r\nhello\r\n.\r\nworld\r\n", True),
    "no headers": (b"\r\nbody only\r\n", True),
    "no body": (b"From: a@x.test\r\nSubject: hi\r\n\r\n", True),
    "folded and 8-bit": ("From: =?utf-8?q?J=C3=B6rg?= <j@x.test>\r\nSubject: caf\u00e9\r\n"
                         " continued\r\n\r\nGr\u00fc\u00dfe\r\n".encode(), True),
    "alternative": (b"From: a@x.test\r\nContent-Type: multipart/alternative; boundary=\"b1\""
                    b"\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"\r\nplain\r\n\r\n--b1\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n"
                    b"--b1--\r\nepilogue\r\n", True),
    "nested with zip": (b"From: a@x.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed;"
                        b" boundary=outer\r\n\r\n--outer\r\nContent-Type: multipart/alternative;"
                        b" boundary=inner\r\n\r\n--inner\r\n\r\ntext\r\n--inner  \r\n"
                        b"Content-Type: text/html\r\n\r\n<b>x</b>\r\n--inner--\r\n\r\n--outer\r\n"
                        b"Content-Type: application/octet-stream; name=\"a.zip\"\r\n"
                        b"Content-Disposition: attachment; filename*=utf-8''%C3%A4.zip\r\n"
                        b"Content-Transfer-Encoding: base64\r\n\r\n" + ZIP64 + b"--outer--\r\n",
                        True),
    "bad base64": (b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\nContent-Type: "
                   b"application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0x"
                   b"LjQK===\r\n--z--\r\n", True),
    "header defect": (b"From: a@x.test\r\n: no name\r\n\r\nbody\r\n", True),
    "no close boundary": (b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n\r\na\r\n",
                          False),
    "no boundary": (b"Content-Type: multipart/mixed\r\n\r\n--z\r\n\r\na\r\n--z--\r\n", False),
    "no start boundary": (b"Content-Type: multipart/mixed; boundary=z\r\n\r\njust text\r\n",
                          False),
    "double boundary": (b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n--z\r\n\r\na"
                        b"\r\n--z--\r\n", False),
    "bare lf": (b"From: a@x.test\r\nSubject: x\r\n\r\nhello\n.\nworld\r\n", False),
    "missing separator": (b"From: a@x.test\r\nthis is not a header\r\n\r\nbody\r\n", False),
    "rfc822 part": (b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\nContent-Type: "
                    b"message/rfc822\r\n\r\nSubject: inner\r\n\r\nx\r\n--z--\r\n", False),
    "digest": (b"Content-Type: multipart/digest; boundary=z\r\n\r\n--z\r\n\r\nSubject: d\r\n"
               b"\r\nx\r\n--z--\r\n", False),
    "unix from": (b"From a@x.test Mon Jan  1 00:00:00 2024\r\nSubject: x\r\n\r\nb\r\n", False),
    "part without blank line": (b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n"
                                b"Content-Type: text/plain\r\n--z--\r\n", False),
    "base64 multipart": (b"Content-Type: multipart/mixed; boundary=z\r\nContent-Transfer-"
                         b"Encoding: base64\r\n\r\n--z\r\n\r\na\r\n--z--\r\n", False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_shortcut_equals_the_stdlib(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, applies = CASES[name]
    assert (mail_message._fast_tree(raw) is not None) is applies
    assert mail_message.parse_message(raw) == _stdlib_only(raw, monkeypatch)


def test_the_zip_inside_is_still_listed() -> None:
    parsed = mail_message.parse_message(CASES["nested with zip"][0])
    [attachment] = [p for p in parsed.parts if p.filename]
    assert attachment.filename == "\u00e4.zip" and attachment.archive_members == ["invoice.exe"]
