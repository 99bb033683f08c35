"""The load: a reproducible message mix, sent over SMTP, and the latency of every message.

The load has the shape of Postfix's smtp-source (N sessions, each sending its
share of the messages back to back), but the sender is our own small asyncio client, because
smtp-source can do neither of the two things the measurements need: send distinct messages
with real attachments (it sends one synthetic body of N bytes, the same for every message),
and say when each message's DATA ended (it keeps no per-message time). One process, one
thread, pre-encoded bytes: its CPU cost is small and the same for every stack.

Each message carries a Message-ID naming the run and its sequence number; the sink
(smtp-sink -d, one file per message) timestamps the arrival with the file's mtime, and
`latencies` pairs the two: end of DATA (our final "." written) -> last byte at the sink.
"""

from __future__ import annotations

import asyncio
import io
import math
import random
import time
import zipfile
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

# (name, bytes on the wire, weight %): most mail is small text; a few large attachments carry
# most of the bytes, as on a real gateway.
SIZES = [("text-2k", 2 * 1024, 60), ("html-20k", 20 * 1024, 25),
         ("pdf-200k", 200 * 1024, 12), ("zip-2m", 2 * 1024 * 1024, 3)]
SEED = 2026
SENDER = "bench@sender.test"
RECIPIENT = "user@example.test"
# The load poses as sender.test's own mail server (XCLIENT from loopback), so every stack
# treats it as mail from the internet: SPF passes, DNSBL and reputation lookups happen.
CLIENT_ADDR = "192.0.2.25"
CLIENT_NAME = "mail.sender.test"

_TEXT = ("the meeting agenda invoice quarterly report project update please find attached "
         "regarding schedule budget review contract delivery customer support ticket order "
         "shipping account statement thanks regards team office tomorrow morning afternoon "
         "monday friday deadline proposal draft final version changes comments feedback "
         "summary minutes notes presentation slides figures revenue costs forecast plan "
         "release migration server backup network security policy training workshop")
WORDS = _TEXT.split(" ")


@dataclass(frozen=True)
class Message:
    kind: str
    body: bytes  # everything after the Message-ID header, CRLF line ends, dot-stuffed


def _words(rng: random.Random, size: int) -> str:
    lines, line, total = [], [], 0
    while total < size:
        word = rng.choice(WORDS)
        line.append(word)
        total += len(word) + 1
        if len(line) >= 9:  # short lines: 7bit, as a mail client writes them
            lines.append(" ".join(line))
            line = []
    lines.append(" ".join(line))
    return "\n".join(lines) + "\n"


def _message(rng: random.Random, kind: str, size: int, number: int) -> Message:
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = f"Bench Sender <{SENDER}>"
    msg["To"] = RECIPIENT
    msg["Subject"] = f"{rng.choice(WORDS).title()} {rng.choice(WORDS)} #{number}"
    msg["Date"] = "Wed, 25 Nov 2026 10:00:00 +0000"
    if kind == "text-2k":
        msg.set_content(_words(rng, size - 400))
    elif kind == "html-20k":
        text = _words(rng, (size - 1200) // 3)
        msg.set_content(text)
        paragraphs = "".join(f"<p>{p}</p>\n" for p in _words(rng, (size - 1200) // 2)
                             .splitlines())
        msg.add_alternative(f"<html><body>{paragraphs}</body></html>\n", subtype="html")
    elif kind == "pdf-200k":
        msg.set_content(_words(rng, 1500))
        # Base64 grows data by 4/3; random bytes, so no scanner can cache or compress them.
        msg.add_attachment(rng.randbytes(size * 3 // 4 - 3000), maintype="application",
                           subtype="pdf", filename=f"report-{number}.pdf")
    else:
        msg.set_content(_words(rng, 1500))
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("data.bin", rng.randbytes(size * 3 // 4 - 60_000))
            zf.writestr("readme.txt", _words(rng, 40_000))
        msg.add_attachment(archive.getvalue(), maintype="application", subtype="zip",
                           filename=f"archive-{number}.zip")
    raw = msg.as_bytes()
    # Dot-stuffing once here, so sending is a plain write.
    raw = raw.replace(b"\r\n.", b"\r\n..")
    return Message(kind, raw)


def make_mix(total: int, seed: int = SEED) -> list[Message]:
    """`total` messages drawn from SIZES; the same seed gives the same bytes on any machine."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible load mix, not a secret
    kinds = rng.choices([(k, s) for k, s, _ in SIZES], weights=[w for *_, w in SIZES], k=total)
    return [_message(rng, kind, size, i) for i, (kind, size) in enumerate(kinds)]


@dataclass
class Sent:
    message_id: str
    kind: str
    size: int
    data_end: float  # time.time() when our final "." was written
    accepted: float  # time.time() of the 250 after DATA
    reply: str


class SmtpError(Exception):
    pass


async def _reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise SmtpError("connection closed")
        lines.append(line.decode(errors="replace").rstrip())
        if line[3:4] != b"-":
            return int(line[:3]), "\n".join(lines)


async def _command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str,
                   expect: int) -> str:
    writer.write(line.encode() + b"\r\n")
    code, text = await _reply(reader)
    if code != expect:
        raise SmtpError(f"{line!r} -> {text}")
    return text


async def _session(port: int, queue: asyncio.Queue[tuple[str, Message]], out: list[Sent],
                   failures: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    try:
        code, text = await _reply(reader)
        if code != 220:
            raise SmtpError(f"banner: {text}")
        await _command(reader, writer, "EHLO bench.test", 250)
        await _command(reader, writer,
                       f"XCLIENT ADDR={CLIENT_ADDR} NAME={CLIENT_NAME} HELO={CLIENT_NAME}", 220)
        await _command(reader, writer, f"EHLO {CLIENT_NAME}", 250)
        while not queue.empty():
            message_id, msg = queue.get_nowait()
            await _command(reader, writer, f"MAIL FROM:<{SENDER}> SIZE={len(msg.body)}", 250)
            await _command(reader, writer, f"RCPT TO:<{RECIPIENT}>", 250)
            await _command(reader, writer, "DATA", 354)
            writer.write(f"Message-ID: <{message_id}>\r\n".encode())
            writer.write(msg.body)
            writer.write(b".\r\n")
            await writer.drain()
            data_end = time.time()
            code, text = await _reply(reader)
            accepted = time.time()
            if code != 250:
                failures.append(f"{message_id}: {text}")
                continue
            out.append(Sent(message_id, msg.kind, len(msg.body), data_end, accepted, text))
        await _command(reader, writer, "QUIT", 221)
    finally:
        writer.close()


async def _send(port: int, messages: list[tuple[str, Message]], sessions: int,
                ) -> tuple[list[Sent], list[str]]:
    queue: asyncio.Queue[tuple[str, Message]] = asyncio.Queue()
    for item in messages:
        queue.put_nowait(item)
    out: list[Sent] = []
    failures: list[str] = []
    await asyncio.gather(*(_session(port, queue, out, failures)
                           for _ in range(min(sessions, len(messages)))))
    return out, failures


def send(port: int, messages: list[Message], sessions: int, tag: str,
         ) -> tuple[list[Sent], list[str]]:
    """Send every message over `sessions` parallel SMTP sessions; Message-IDs `tag.N@...`."""
    items = [(f"{tag}.{i}@bench.test", m) for i, m in enumerate(messages)]
    return asyncio.run(_send(port, items, sessions))


def arrivals(folder: Path, tag: str) -> dict[str, float]:
    """Message-ID -> arrival time at the sink (the file's mtime: smtp-sink writes the file as
    the data comes in and stops at the final dot). Only the headers are read."""
    marker = f"Message-ID: <{tag}.".encode()
    seen: dict[str, float] = {}
    for path in folder.iterdir():
        with open(path, "rb") as fh:
            head = fh.read(65536)
        start = head.find(marker)
        if start < 0:
            start = head.lower().find(marker.lower())
        if start < 0:
            continue
        end = head.find(b">", start)
        seen[head[start + 13:end].decode()] = path.stat().st_mtime
    return seen


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: of 200 samples p99 is the 198th)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]
