"""parse_message: total on bad input, bounded on hostile input, archives listed by name."""

from __future__ import annotations

import base64
import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import py7zr
import pytest

from mailwarden.mail import message as message_module
from mailwarden.mail.message import parse_message, sniff

DATA = Path(__file__).parent.parent / "data" / "mail"


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def with_attachment(filename: str, data: bytes, ctype: str = "application/octet-stream",
                    eol: str = "\r\n") -> bytes:
    body = base64.encodebytes(data).decode()
    text = (f"From: a@sender.test\nTo: bob@example.test\nSubject: file\nMIME-Version: 1.0\n"
            f"Content-Type: multipart/mixed; boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\n"
            f"see attached\n--b\nContent-Type: {ctype}\n"
            f"Content-Disposition: attachment; filename=\"{filename}\"\n"
            f"Content-Transfer-Encoding: base64\n\n{body}--b--\n")
    return text.replace("\n", eol).encode()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def tar_bytes(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as archive:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def seven_zip_bytes(members: dict[str, bytes], password: str | None = None,
                    header_encryption: bool = False) -> bytes:
    out = io.BytesIO()
    with py7zr.SevenZipFile(out, "w", password=password,
                            header_encryption=header_encryption) as archive:
        for name, data in members.items():
            archive.writestr(data, name)
    return out.getvalue()


def attachment(raw: bytes):
    parts = [p for p in parse_message(raw).parts if p.is_attachment]
    assert len(parts) == 1
    return parts[0]


def test_plain_message_headers_and_text() -> None:
    msg = parse_message(load("plain.eml"))
    assert msg.from_address == "alice@sender.test"
    assert msg.from_domain == "sender.test"
    assert msg.subject == "Lunch tomorrow?"
    assert msg.message_id == "<plain-1@sender.test>"
    assert msg.header("to") == "bob@example.test"
    assert msg.header("X-Absent") == ""
    assert "meet at noon" in msg.text
    assert msg.linesep == "\r\n"
    assert msg.size == len(load("plain.eml"))
    assert msg.defects == []


def test_multipart_parts_have_index_paths_types_and_decoded_filenames() -> None:
    msg = parse_message(load("attachments.eml"))
    summary = [(p.index, p.content_type, p.filename, p.is_attachment) for p in msg.parts]
    assert summary == [
        ("", "multipart/mixed", "", False),
        ("1", "multipart/alternative", "", False),
        ("1.1", "text/plain", "", False),
        ("1.2", "text/html", "", False),
        ("2", "application/pdf", "report.pdf", True),
        ("3", "application/octet-stream", "Rechnung für Sie.exe", True),  # RFC 2231
    ]
    assert msg.part("2").detected_type == "application/pdf"
    assert msg.part("3").detected_type == "application/x-msdownload"  # MZ, whatever declared
    assert msg.part("3").size == 64
    assert "documents attached" in msg.text and "<p>" in msg.text


def test_rfc2047_filename_and_8bit_headers_are_decoded() -> None:
    raw = with_attachment("=?utf-8?b?w7xiZXIuZXhl?=", b"x")
    assert attachment(raw).filename == "über.exe"
    msg = parse_message(load("8bit-headers.eml"))
    assert msg.subject == "Grüße aus Köln"
    assert msg.header("From") == "Jörg Müller <joerg@sender.test>"
    assert msg.from_address == "joerg@sender.test"


@pytest.mark.parametrize("name", ["no-headers.eml", "broken-base64.eml", "truncated.eml",
                                  "bare-lf.eml", "8bit-headers.eml", "html-script.eml"])
def test_bad_input_never_raises_and_keeps_the_bytes(name: str) -> None:
    raw = load(name)
    msg = parse_message(raw)
    assert msg.raw is raw
    assert msg.parts  # at least the top level


def test_no_headers_at_all() -> None:
    msg = parse_message(load("no-headers.eml"))
    assert (msg.from_address, msg.from_domain, msg.subject, msg.message_id) == ("", "", "", "")
    assert msg.defects  # the missing header/body separator is reported


def test_broken_base64_is_reported_not_fatal() -> None:
    msg = parse_message(load("broken-base64.eml"))
    assert any("part 2" in d for d in msg.defects)
    assert msg.part("2").filename == "a.bin"


def test_bare_lf_is_detected_as_the_line_separator() -> None:
    msg = parse_message(load("bare-lf.eml"))
    assert msg.linesep == "\n"
    assert msg.subject == "bare lf"


def test_100_deep_nesting_is_walked_to_the_innermost_text() -> None:
    msg = parse_message(load("nested-100.eml"))
    assert "innermost" in msg.text
    assert max(p.depth for p in msg.parts) == 100


def test_nesting_beyond_the_limit_is_a_defect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(message_module, "MAX_DEPTH", 10)
    msg = parse_message(load("nested-100.eml"))
    assert "innermost" not in msg.text
    assert any("deeper than 10" in d for d in msg.defects)


def test_nesting_that_breaks_the_stdlib_parser_still_gives_headers() -> None:
    lines = ["From: a@sender.test", "Subject: very deep", "MIME-Version: 1.0"]
    for i in range(3000):
        lines += [f'Content-Type: multipart/mixed; boundary="b{i}"', "", f"--b{i}"]
    msg = parse_message("\r\n".join(lines).encode())
    assert msg.subject == "very deep"
    assert msg.from_address == "a@sender.test"
    assert msg.defects


def test_part_count_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(message_module, "MAX_PARTS", 5)
    parts = "".join(f"--b\r\nContent-Type: text/plain\r\n\r\n{i}\r\n" for i in range(20))
    raw = (f"Subject: many\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; "
           f"boundary=b\r\n\r\n{parts}--b--\r\n").encode()
    msg = parse_message(raw)
    assert len(msg.parts) == 5
    assert any("more than 5 parts" in d for d in msg.defects)


def test_text_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(message_module, "MAX_TEXT", 100)
    raw = b"Subject: long\r\n\r\n" + b"a" * 5000 + b"\r\n"
    assert len(parse_message(raw).text) == 100


def test_zip_members_and_nested_zip_are_listed() -> None:
    inner = zip_bytes({"payload/evil.js": b"x"})
    raw = with_attachment("docs.zip", zip_bytes({"invoice.exe": b"MZ", "inner.zip": inner}))
    part = attachment(raw)
    assert part.detected_type == "application/zip"
    assert part.archive_members == ["invoice.exe", "inner.zip", "inner.zip/payload/evil.js"]
    assert part.archive_error is None


def test_archive_nesting_stops_after_two_levels() -> None:
    level3 = zip_bytes({"deepest.exe": b"MZ"})
    level2 = zip_bytes({"l3.zip": level3})
    raw = with_attachment("l1.zip", zip_bytes({"l2.zip": level2}))
    assert attachment(raw).archive_members == ["l2.zip", "l2.zip/l3.zip"]


def test_zip_detected_by_magic_even_with_innocent_name() -> None:
    raw = with_attachment("photo.jpg", zip_bytes({"run.exe": b"MZ"}), "image/jpeg")
    assert attachment(raw).archive_members == ["run.exe"]


def test_zip_bomb_is_listed_without_decompressing(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = zip_bytes({f"part{i}.bin": b"\0" * (20 * 1024 * 1024) for i in range(5)})
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def open_member(archive: zipfile.ZipFile, name: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(getattr(name, "filename", name))
        return real_open(archive, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", open_member)
    part = attachment(with_attachment("bomb.zip", bomb))
    assert len(part.archive_members) == 5
    assert opened == []  # names from the central directory; not one member inflated


def test_encrypted_zip_lists_names_and_says_encrypted() -> None:
    data = bytearray(zip_bytes({"secret.exe": b"MZ"}))
    # Set the "encrypted" general-purpose flag in the local and central headers.
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        data[at + offset] |= 1
    part = attachment(with_attachment("locked.zip", bytes(data)))
    assert part.archive_members == ["secret.exe"]
    assert part.archive_error == "encrypted"


def test_corrupt_zip_gives_an_error_not_an_exception() -> None:
    part = attachment(with_attachment("broken.zip", b"PK\x03\x04garbage" * 10))
    assert part.archive_members == []
    assert part.archive_error is not None and part.archive_error.startswith("corrupt")


@pytest.mark.parametrize(("mode", "name"), [("w", "a.tar"), ("w:gz", "a.tar.gz"),
                                            ("w:bz2", "a.tar.bz2"), ("w:xz", "a.tar.xz")])
def test_tar_variants(mode: str, name: str) -> None:
    data = tar_bytes({"dir/tool.exe": b"MZ", "readme.txt": b"hi"}, mode)
    part = attachment(with_attachment(name, data))
    assert part.archive_members == ["dir/tool.exe", "readme.txt"]


def test_tgz_decompression_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(message_module, "MAX_TAR_STREAM", 64 * 1024)
    data = tar_bytes({"big.bin": b"\0" * (1024 * 1024), "after.exe": b"MZ"})
    part = attachment(with_attachment("bomb.tgz", data))
    assert part.archive_members == ["big.bin"]
    assert part.archive_error == "too large to list completely"


def test_plain_gzip_lists_the_compressed_file_name() -> None:
    import gzip

    part = attachment(with_attachment("setup.exe.gz", gzip.compress(b"MZ" * 100)))
    assert part.archive_members == ["setup.exe"]


def test_7z_names_and_encryption() -> None:
    part = attachment(with_attachment("a.7z", seven_zip_bytes({"bin/run.exe": b"MZ"})))
    assert part.detected_type == "application/x-7z-compressed"
    assert "bin/run.exe" in part.archive_members
    assert part.archive_error is None
    locked = seven_zip_bytes({"run.exe": b"MZ"}, password="pw")
    assert attachment(with_attachment("b.7z", locked)).archive_error == "encrypted"
    hidden = seven_zip_bytes({"run.exe": b"MZ"}, password="pw", header_encryption=True)
    part = attachment(with_attachment("c.7z", hidden))
    assert part.archive_error == "encrypted"
    assert part.archive_members == []


def test_member_count_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(message_module, "MAX_MEMBERS", 3)
    part = attachment(with_attachment("many.zip", zip_bytes({f"f{i}": b"" for i in range(10)})))
    assert part.archive_members == ["f0", "f1", "f2"]
    assert part.archive_error == "too many members"


def test_sniff() -> None:
    assert sniff(b"MZ\x90") == "application/x-msdownload"
    assert sniff(b"%PDF-1.7") == "application/pdf"
    assert sniff(b"\x1f\x8b\x08") == "application/gzip"
    assert sniff(b"hello") is None


def test_nested_archive_bytes_are_bounded_per_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(message_module, "MAX_INNER_TOTAL", 1000)
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("x.exe", bytes(2000))
    outer = zip_bytes({"a.zip": zip_bytes({"small.exe": b"MZ"}), "b.zip": stored.getvalue()})
    part = attachment(with_attachment("outer.zip", outer))
    assert part.archive_members == ["a.zip", "a.zip/small.exe", "b.zip"]
