"""Parse a message once, never raise, and keep what the rule engine needs.

Policy choice: the stdlib parser with ``email.policy.compat32``. The modern ``default``
policy builds structured header objects lazily, and hostile headers (bad address lists,
broken encoded words) can raise on first access, long after parsing. compat32 keeps header
values as the raw strings of the message (8-bit bytes as surrogate escapes), so parsing is
total and we decode headers ourselves, each decode guarded. It also lets actions.py write
the message back with ``maxheaderlen=0``, which never re-folds headers we did not touch.

Work is bounded on hostile input: at most MAX_PARTS parts and MAX_DEPTH levels of nesting are
walked (iteratively, no recursion), body text is kept up to MAX_TEXT bytes, archives are
listed from their directories only (zip central directory, tar headers through a
decompression cap, 7z headers), MAX_MEMBERS names per part, nested archives two levels deep.
Anything cut short is recorded in ``defects`` so a rule or a person can see it.
"""

from __future__ import annotations

import bz2
import email
import email.parser
import email.utils
import gzip
import io
import lzma
import re
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy as email_policy
from email.header import decode_header, make_header
from email.message import Message
from typing import IO, cast

from .compat import mime_tree as _fast_tree

MAX_PARTS = 10_000
MAX_DEPTH = 100  # MIME nesting levels walked; deeper parts are reported, not inspected
MAX_TEXT = 1024 * 1024  # decoded body text kept for body regexes
MAX_MEMBERS = 10_000  # archive member names per attachment, nested ones included
MAX_ARCHIVE_DEPTH = 2  # an archive inside an archive is listed; one more level is not
MAX_INNER_ARCHIVE = 10 * 1024 * 1024  # bytes of a nested archive read into memory to list it
MAX_INNER_TOTAL = 32 * 1024 * 1024  # all nested archives of one message together
MAX_TAR_STREAM = 64 * 1024 * 1024  # decompressed bytes read while walking a compressed tar
MAX_HEADER_TEXT = 64 * 1024  # one decoded header value

# Cheap content sniffing: the first bytes say more than a declared type an attacker chose.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"MZ", "application/x-msdownload"),
    (0, b"\x7fELF", "application/x-executable"),
    (0, b"PK\x03\x04", "application/zip"),
    (0, b"PK\x05\x06", "application/zip"),  # empty zip
    (0, b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (0, b"\x1f\x8b", "application/gzip"),
    (0, b"BZh", "application/x-bzip2"),
    (0, b"\xfd7zXZ\x00", "application/x-xz"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"Rar!\x1a\x07", "application/vnd.rar"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "application/x-ole-storage"),
    (257, b"ustar", "application/x-tar"),
)

_ARCHIVE_TYPES = {
    "application/zip": "zip",
    "application/x-7z-compressed": "7z",
    "application/gzip": "tar:gz",
    "application/x-bzip2": "tar:bz2",
    "application/x-xz": "tar:xz",
    "application/x-tar": "tar",
}
_ARCHIVE_SUFFIXES = (
    (".tar.gz", "tar:gz"), (".tgz", "tar:gz"), (".tar.bz2", "tar:bz2"), (".tbz2", "tar:bz2"),
    (".tar.xz", "tar:xz"), (".txz", "tar:xz"), (".tar", "tar"), (".zip", "zip"), (".7z", "7z"),
    (".gz", "tar:gz"), (".bz2", "tar:bz2"), (".xz", "tar:xz"),
)


@dataclass(frozen=True)
class Part:
    """One MIME part (containers included), addressed by its index path."""

    index: str  # "" for the top level, then "1", "1.2", ... (IMAP-like numbering)
    depth: int
    content_type: str  # declared, lowercased ("text/plain" when absent)
    detected_type: str | None  # from magic bytes, when recognised
    filename: str  # decoded (RFC 2231 / 2047), "" when none
    size: int  # decoded payload bytes (0 for containers)
    is_attachment: bool
    is_container: bool  # multipart/* or message/rfc822
    archive_members: list[str] = field(default_factory=list)
    archive_error: str | None = None
    # The decoded bytes of a leaf part, for clamd (scan_targets); b"" for containers.
    payload: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True)
class ParsedMessage:
    raw: bytes
    size: int
    headers: list[tuple[str, str]]  # (name, decoded value), in order
    parts: list[Part]
    text: str
    defects: list[str]
    from_address: str
    from_domain: str
    subject: str
    message_id: str
    linesep: str  # "\r\n" or "\n", as the input uses
    incomplete: bool = False  # some parts were not inspected (too deep, too many, unparsable)

    def header(self, name: str) -> str:
        """Decoded value of the first field of that name, '' when absent."""
        wanted = name.lower()
        return next((v for n, v in self.headers if n.lower() == wanted), "")

    def header_all(self, name: str) -> list[str]:
        """Decoded values of every field of that name."""
        wanted = name.lower()
        return [v for n, v in self.headers if n.lower() == wanted]

    def part(self, index: str) -> Part | None:
        return next((p for p in self.parts if p.index == index), None)


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse ``raw``; never raises. Problems end up in ``defects``."""
    defects: list[str] = []
    linesep = detect_linesep(raw)
    try:
        # compat.mime_tree: the same tree without the FeedParser's per-line loop, when it can.
        msg = _fast_tree(raw) or email.message_from_bytes(raw, policy=email_policy.compat32)
    except RecursionError:
        # The stdlib parser recurses per nesting level; a few hundred levels exhaust it.
        # Headers alone still parse, so the sender rules keep working.
        defects.append("mime nesting too deep to parse; body not inspected")
        msg = _headers_only(raw)
    except Exception as exc:  # the parser is meant to be total; belt and braces
        defects.append(f"parser failed: {type(exc).__name__}")
        msg = _headers_only(raw)

    headers = [(str(name), decode_header_value(value)) for name, value in _raw_items(msg)]
    before = len(defects)
    parts, text = _walk(msg, defects)
    incomplete = bool(before) or any(d.startswith(("more than", "mime nesting"))
                                     for d in defects[before:])
    from_value = next((v for n, v in headers if n.lower() == "from"), "")
    from_address = _first_address(from_value)
    subject = next((v for n, v in headers if n.lower() == "subject"), "")
    message_id = next((v for n, v in headers if n.lower() == "message-id"), "").strip()
    return ParsedMessage(
        raw=raw, size=len(raw), headers=headers, parts=parts, text=text, defects=defects,
        from_address=from_address, from_domain=from_address.rpartition("@")[2].lower(),
        subject=subject, message_id=message_id, linesep=linesep, incomplete=incomplete,
    )


# A line that starts a uuencoded file ("begin 644 name") or a yEnc one: clamd decodes both
# out of a plain text body, so such a body is no longer plain text.
_ENCODED_FILE = re.compile(rb"^(?:begin(?:-base64)? +[0-7]{1,4}\b|=ybegin )", re.MULTILINE)


def scan_targets(message: ParsedMessage) -> list[Part] | None:
    """The parts clamd must see (docs/architecture.md, "Virus scanning"): every leaf part that
    can carry malware, decoded: attachments, HTML, anything that is not inline text/plain,
    text that sniffs as something else. An empty list: plain text only, nothing to scan.
    None when clamd must get the whole message and parse it itself: the parser found
    something wrong or could not inspect every part (so a trick that fools our parser still
    meets clamd's), or a text holds a uuencoded or yEnc file (clamd's mail parser decodes
    those out of a body)."""
    if message.defects or message.incomplete:
        return None
    targets = []
    for part in message.parts:
        if part.is_container or not part.payload:
            continue
        if (part.content_type == "text/plain" and not part.is_attachment
                and part.detected_type is None):
            if _ENCODED_FILE.search(part.payload) is not None:
                return None
            continue
        targets.append(part)
    return targets


def detect_linesep(raw: bytes) -> str:
    """CRLF when the first line ends with it (SMTP's form), else bare LF."""
    end = raw.find(b"\n")
    return "\r\n" if end > 0 and raw[end - 1:end] == b"\r" else "\n"


def _headers_only(raw: bytes) -> Message:
    try:
        return email.parser.BytesHeaderParser(policy=email_policy.compat32).parsebytes(raw)
    except Exception:
        return Message()


def _raw_items(msg: Message) -> list[tuple[str, str]]:
    try:
        return [(str(n), str(v)) for n, v in msg.raw_items()]  # no policy decoding
    except Exception:
        return []


# --- header decoding ---------------------------------------------------------------------

_SURROGATES = re.compile("[\udc80-\udcff]")  # undeclared 8-bit bytes, as compat32 keeps them


def decode_header_value(value: object) -> str:
    """RFC 2047 words and raw 8-bit bytes to text; unfolded; never raises."""
    text = str(value)
    if not text.isascii() and _SURROGATES.search(text):
        # compat32 keeps undeclared 8-bit bytes as surrogate escapes: try UTF-8, then the
        # Windows code page most such mail is written in.
        data = text.encode("ascii", "surrogateescape")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("cp1252", "replace")
    text = re.sub(r"\r?\n[ \t]", " ", text).replace("\r", "").replace("\n", "")
    if "=?" in text:
        text = _decode_words(text)
    return text[:MAX_HEADER_TEXT].strip()


def _decode_words(text: str) -> str:
    try:
        return str(make_header(decode_header(text)))
    except Exception:  # broken encoded words (bad base64, unknown charset): keep as written
        return text


def _first_address(value: str) -> str:
    try:
        pairs = email.utils.getaddresses([value])
    except Exception:
        pairs = []
    for _name, addr in pairs:
        if "@" in addr:
            return addr.strip().strip("<>")
    match = re.search(r"[^\s<>\"@,;]+@[^\s<>\"@,;]+", value)
    return match.group(0) if match else ""


# --- the part walk -----------------------------------------------------------------------


def _walk(msg: Message, defects: list[str]) -> tuple[list[Part], str]:
    parts: list[Part] = []
    text: list[str] = []
    text_len = 0
    members_left = [MAX_MEMBERS, MAX_INNER_TOTAL]  # shared budget: names, inner bytes
    stack: list[tuple[Message, str, int]] = [(msg, "", 0)]
    too_deep = False
    for defect in getattr(msg, "defects", []):
        defects.append(f"message: {type(defect).__name__}")
    while stack:
        if len(parts) >= MAX_PARTS:
            defects.append(f"more than {MAX_PARTS} parts; the rest not inspected")
            break
        node, index, depth = stack.pop()
        part = _describe(node, index, depth, defects, members_left)
        parts.append(part)
        if index:
            defects.extend(f"part {index}: {type(d).__name__}"
                           for d in getattr(node, "defects", []))
        if part.is_container:
            children = node.get_payload()
            if not isinstance(children, list):
                continue
            if depth + 1 > MAX_DEPTH:
                too_deep = True
                continue
            prefix = f"{index}." if index else ""
            # Reversed so the stack pops them in document order.
            for number in range(len(children), 0, -1):
                child = children[number - 1]
                if isinstance(child, Message):
                    stack.append((child, f"{prefix}{number}", depth + 1))
        elif part.content_type.startswith("text/") \
                and text_len < MAX_TEXT:
            chunk = _to_text(node, part.payload[: MAX_TEXT - text_len])
            text.append(chunk)
            text_len += len(chunk)
    if too_deep:
        defects.append(f"mime nesting deeper than {MAX_DEPTH} levels; deeper parts not inspected")
    return parts, "\n".join(text)


def _describe(node: Message, index: str, depth: int, defects: list[str],
              members_left: list[int]) -> Part:
    try:
        ctype = node.get_content_type().lower()
    except Exception:
        ctype = "text/plain"
    is_container = node.is_multipart()
    filename = _filename(node)
    try:
        disposition = (node.get_content_disposition() or "").lower()
    except Exception:
        disposition = ""
    if is_container:
        return Part(index=index, depth=depth, content_type=ctype, detected_type=None,
                    filename=filename, size=0, is_attachment=False, is_container=True)
    payload = _payload(node, index, defects)
    detected = sniff(payload)
    is_attachment = (disposition == "attachment" or bool(filename)
                     or ctype.split("/")[0] not in ("text", "multipart", "message"))
    members: list[str] = []
    error: str | None = None
    kind = archive_kind(filename, detected or ctype)
    if kind is not None:
        members, error = list_archive(payload, kind, filename, members_left)
    return Part(index=index, depth=depth, content_type=ctype, detected_type=detected,
                filename=filename, size=len(payload), is_attachment=is_attachment,
                is_container=False, archive_members=members, archive_error=error,
                payload=payload)


def _filename(node: Message) -> str:
    try:
        name = node.get_filename() or ""  # RFC 2231 continuations and charsets
    except Exception:
        name = ""
    return decode_header_value(name) if name else ""  # RFC 2047 words, which Outlook sends


def _payload(node: Message, index: str, defects: list[str]) -> bytes:
    try:
        data = node.get_payload(decode=True)
    except Exception as exc:
        defects.append(f"part {index or '0'}: payload not decodable ({type(exc).__name__})")
        return b""
    return data if isinstance(data, bytes) else b""


def _to_text(node: Message, payload: bytes) -> str:
    try:
        return payload.decode(node.get_content_charset() or "utf-8", "replace")
    except Exception:  # unknown or bogus charset names (LookupError, odd parameter values)
        return payload.decode("utf-8", "replace")


def sniff(data: bytes) -> str | None:
    """A content type from the first bytes, for the formats rules care about."""
    for offset, magic, ctype in _MAGIC:
        if data[offset:offset + len(magic)] == magic:
            return ctype
    return None


# --- archives ----------------------------------------------------------------------------


def archive_kind(filename: str, ctype: str) -> str | None:
    """zip, 7z, tar or tar:<compression>, from the sniffed type first, then the name."""
    if ctype in _ARCHIVE_TYPES:
        return _ARCHIVE_TYPES[ctype]
    lower = filename.lower()
    for suffix, kind in _ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            return kind
    return None


def list_archive(data: bytes, kind: str, filename: str, budget: list[int],
                 level: int = 1) -> tuple[list[str], str | None]:
    """Member names, never content; (names, error). ``budget`` is [names left, bytes of
    nested archives left], shared by every archive of the message."""
    names: list[str] = []
    try:
        if kind == "zip":
            error = _list_zip(data, names, budget, level)
        elif kind == "7z":
            error = _list_7z(data, names, budget)
        else:
            error = _list_tar(data, kind, filename, names, budget, level)
    except Exception as exc:  # corrupt archives raise anything from struct to EOFError
        error = f"corrupt: {type(exc).__name__}"
    return names, error


def _take(names: list[str], name: str, budget: list[int]) -> bool:
    if budget[0] <= 0:
        return False
    names.append(name)
    budget[0] -= 1
    return True


def _nested(data: bytes, name: str, names: list[str], budget: list[int], level: int) -> None:
    kind = archive_kind(name, sniff(data) or "")
    if kind is None:
        return
    if level >= MAX_ARCHIVE_DEPTH:
        return
    inner, _error = list_archive(data, kind, name, budget, level + 1)
    for member in inner:
        names.append(f"{name}/{member}")


def _list_zip(data: bytes, names: list[str], budget: list[int], level: int) -> str | None:
    # ZipFile reads the central directory only; content is decompressed for nested
    # archives alone, capped at MAX_INNER_ARCHIVE bytes, so a zip bomb stays a list.
    error: str | None = None
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if not _take(names, info.filename, budget):
                return "too many members"
            if info.flag_bits & 0x1:
                error = "encrypted"
                continue
            if level < MAX_ARCHIVE_DEPTH and archive_kind(info.filename, "") is not None \
                    and info.file_size <= MAX_INNER_ARCHIVE:
                inner = _read_member(archive, info, budget)
                if inner is not None:
                    _nested(inner, info.filename, names, budget, level)
    return error


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo,
                 budget: list[int]) -> bytes | None:
    """A nested archive's bytes, or None when unreadable or larger than the caps."""
    cap = min(MAX_INNER_ARCHIVE, budget[1])
    try:
        with archive.open(info) as member:
            inner = member.read(cap + 1)
    except Exception:  # bad CRC, unsupported method: the outer name is already listed
        return None
    budget[1] -= len(inner)
    return inner if len(inner) <= cap else None


def _list_7z(data: bytes, names: list[str], budget: list[int]) -> str | None:
    import py7zr  # imported late: only 7z attachments pay for it
    from py7zr.exceptions import PasswordRequired

    try:
        with py7zr.SevenZipFile(io.BytesIO(data), mode="r") as archive:
            encrypted = archive.needs_password()
            for name in archive.getnames():
                if not _take(names, name, budget):
                    return "too many members"
    except PasswordRequired:
        return "encrypted"  # encrypted headers: not even the names are readable
    # Members of a 7z are not opened: that would mean decompressing content.
    return "encrypted" if encrypted else None


class _Capped(io.RawIOBase):
    """A reader that stops with an error after ``limit`` bytes (decompression bombs)."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        self.inner, self.left = inner, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.left <= 0:
            raise _TooLarge
        data = self.inner.read(min(len(buffer), self.left))
        buffer[: len(data)] = data
        self.left -= len(data)
        return len(data)


class _TooLarge(Exception):
    pass


def _list_tar(data: bytes, kind: str, filename: str, names: list[str], budget: list[int],
              level: int) -> str | None:
    compression = kind.partition(":")[2]
    openers: dict[str, Callable[[IO[bytes]], IO[bytes]]] = {
        "gz": lambda f: cast(IO[bytes], gzip.GzipFile(fileobj=f)),
        "bz2": bz2.BZ2File, "xz": lzma.LZMAFile}
    opener = openers.get(compression)
    raw: IO[bytes] = io.BytesIO(data)
    if opener is not None:
        raw = io.BufferedReader(_Capped(opener(raw), MAX_TAR_STREAM))
    try:
        # Stream mode ("r|"): headers are read in order; skipping member data still
        # decompresses it, which the cap bounds.
        with tarfile.open(fileobj=raw, mode="r|") as archive:
            for info in archive:
                if not _take(names, info.name, budget):
                    return "too many members"
                if level < MAX_ARCHIVE_DEPTH and info.isfile() \
                        and archive_kind(info.name, "") is not None \
                        and info.size <= MAX_INNER_ARCHIVE:
                    member = archive.extractfile(info)
                    if member is not None and info.size <= budget[1]:
                        budget[1] -= info.size
                        _nested(member.read(info.size), info.name, names, budget, level)
    except _TooLarge:
        return "too large to list completely"
    except tarfile.ReadError:
        if opener is None or names:
            raise
        # A compressed single file (report.pdf.gz), not a tar: its name is the member.
        stem = re.sub(r"\.(gz|bz2|xz|tgz|tbz2|txz)$", "", filename, flags=re.IGNORECASE)
        _take(names, stem or "(compressed data)", budget)
    return None
