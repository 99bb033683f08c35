"""Reading SMTP DATA in bulk: one search for the end of data, one unstuffing pass.

aiosmtpd 1.4.6 reads DATA one line at a time (`readuntil(b"\\r\\n")`, a Python step and a
bytearray per line: about 27,000 of them for a 2 MB attachment) behind a StreamReader whose
limit, 1001 bytes, also pauses the socket every 2 kB. Here the end of data is found by
StreamReader's own search for CRLF "." CRLF over the buffered bytes, with the reader's limit
raised to the size limit for the duration of DATA, and dot-unstuffing is one bytes.replace.

The result is the same as aiosmtpd's for every input it accepts:
- lines end only at CRLF, so a bare LF "." bare LF (or any mix, the SMTP smuggling forms)
  is data, never the end of it;
- a line starting with "." loses that dot (RFC 5321 4.5.2), whatever follows it;
- more than `limit` bytes: the rest is read and dropped up to the end of data, and the
  caller answers 552, as aiosmtpd does.
aiosmtpd's 500 for a line over 1001 bytes is not kept: the filter's only clients are
Postfix's smtp client and smtpd_proxy_filter, which pass lines as Postfix accepted them,
and refusing a message Postfix has taken would only bounce it.
"""

from __future__ import annotations

import asyncio

END = b"\r\n.\r\n"
_DRAIN_LIMIT = 1024 * 1024  # while dropping an oversized message: buffer this much at most


class TooMuchData(Exception):
    """More than the size limit; the data has been read up to its end and dropped."""


def _pending_prefix(tail: bytes) -> int:
    """Length of the longest end of `tail` that starts the end-of-data marker."""
    for size in range(min(len(END) - 1, len(tail)), 0, -1):
        if END.startswith(tail[-size:]):
            return size
    return 0


async def read_data(reader: asyncio.StreamReader, limit: int | None) -> bytes:
    """The message after the 354, unstuffed, ending with its last CRLF ("" when empty).

    `limit` caps the bytes on the wire (dot-stuffed, without the final "." line). Raises
    TooMuchData past it, IncompleteReadError when the client goes away.
    """
    # StreamReader.readuntil finds the marker only in bytes not yet consumed, so what has
    # been consumed must never end with the start of a marker: the first three bytes are
    # read alone (".\r\n" is an empty message, and a message is otherwise at least one
    # line and the marker, five bytes), then while the bytes read so far end with a
    # partial marker, exactly the bytes that would complete it are read (a well-formed
    # stream always has that many left, so this never waits for bytes that will not come).
    saved = reader._limit
    reader._limit = (limit or 2**31) + len(END)
    try:
        head = await reader.readexactly(3)
        if head == b".\r\n":
            return b""
        pieces = [head]
        tail = head
        while True:
            pending = _pending_prefix(tail)
            if not pending:
                pieces.append(await reader.readuntil(END))
                break
            more = await reader.readexactly(len(END) - pending)
            pieces.append(more)
            if tail[-pending:] + more == END:
                break
            tail = (tail + more)[-(len(END) - 1):]
    except asyncio.LimitOverrunError:
        await _drain(reader)
        raise TooMuchData from None
    finally:
        reader._limit = saved
    wire = b"".join(pieces)
    if limit is not None and len(wire) - 3 > limit:
        raise TooMuchData
    return unstuff(wire[:-3])  # the final ".\r\n"; the last line keeps its CRLF


def unstuff(data: bytes) -> bytes:
    """Remove the dot RFC 5321 4.5.2 adds at the start of lines (lines end at CRLF)."""
    if data[:1] == b".":
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n") if b"\r\n." in data else data


def stuff(data: bytes) -> bytes:
    """Dot-stuff for sending, as smtplib does (any line start, bare LF included), in one
    pass; the result ends with CRLF so the caller appends ".\\r\\n"."""
    if data[:1] == b".":
        data = b"." + data
    if b"\n." in data:
        data = data.replace(b"\n.", b"\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


async def _drain(reader: asyncio.StreamReader) -> None:
    """Read and drop up to the end of data, buffering little (the message is refused)."""
    reader._limit = _DRAIN_LIMIT
    while True:
        try:
            await reader.readuntil(END)
            return
        except asyncio.LimitOverrunError as exc:
            # Not found yet: what is consumed here leaves the last four bytes buffered, so a
            # marker split across two reads is still found.
            await reader.readexactly(exc.consumed)
