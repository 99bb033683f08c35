"""Reading SMTP DATA in bulk: one search for the end of data, one unstuffing pass.

The reader itself (compat.read_data) touches asyncio's internals and lives in mail/compat.py;
the rules it keeps, and the stuffing both ways, are here.

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

END = b"\r\n.\r\n"


class TooMuchData(Exception):
    """More than the size limit; the data has been read up to its end and dropped."""


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
