"""The Postfix policy service (127.0.0.1:10022, `check_policy_service`): SPF, greylisting,
rate limits, at RCPT time.

Shape (STYLE 11): `parse_request(bytes)` is pure, `Policy.decide(attrs)` returns one
`PolicyAction` and does no I/O except through what it was given (SPF function, greylist
store, clock), and the asyncio server only moves bytes, with an idle timeout, a bounded line
length and every client closed in `finally`. A request we cannot understand gets DUNNO and a
log line: the policy service must never be the reason mail stops.

Checks, in order, for `protocol_state=RCPT` (any other state: DUNNO):
1. trusted networks (and loopback): outbound mail; only the per-sender rate limit applies.
   Backup MX hosts: nothing applies (they relay what passed our own MX's checks).
2. SPF (pyspf, our resolver, 10 s in all): fail -> 550 5.7.23 unless disabled or exempt.
3. greylisting (triplet, see `triplet`); DEFER_IF_PERMIT while too early.
4. the per-client rate limit (recipients per sliding hour, in memory).
5. PREPEND the Received-SPF header, once per message (Postfix's `instance` attribute), so
   the content filter reads this verdict instead of computing SPF again.

Every message from an untrusted client gets exactly one Received-SPF from us, even when SPF
was not checked (result none, with the reason in the comment): a Received-SPF a spammer put in
the message is then never the topmost one, which is the one the filter reads.

Null sender: greylisted like any other triplet (sender "<>"), as PMG does ("mails with an
empty sender are always delayed"). Bounces come from real MTAs, which retry; the auto-whitelist
lets them through without delay once their network has passed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import signal
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import dns.exception
import dns.rdatatype
import dns.resolver
import spf

from ..errors import MailwardenError
from ..layout import Layout
from ..state.schema import State
from ..store.db import Database
from ..store.greylist import GreylistStore, GreylistTimes
from .receivedspf import SPF_RESULTS, one_line, received_spf

log = logging.getLogger("mailwarden.policy")

# The protocol: name=value lines, a blank line ends a request. Postfix's own attributes are
# short; a line this long is not Postfix talking.
MAX_LINE = 8192
MAX_ATTRIBUTES = 100
IDLE_TIMEOUT = 300.0  # Postfix keeps policy connections open between sessions (max_idle 100 s)
SPF_TIMEOUT = 10.0  # all DNS work of one SPF check (PMG: 10 s)
INSTANCE_MEMORY = 10000  # messages whose SPF verdict we remember (for their next recipients)

SpfCheck = Callable[[str, str, str], tuple[str, str]]  # (ip, sender, helo) -> (result, text)
Clock = Callable[[], float]



class PolicyRequestError(MailwardenError):
    """A policy request that is not `name=value` lines."""

    code = "policy_request_invalid"


# --- the protocol ------------------------------------------------------------------------


def parse_request(data: bytes) -> dict[str, str]:
    """One request (its lines, with or without the terminating blank line) -> attributes.

    Each line is split on the first '=' (values may contain '='). Bytes that are not UTF-8
    (8-bit envelope addresses) are kept as surrogate escapes, so nothing is lost silently.
    """
    attrs: dict[str, str] = {}
    text = data.decode("utf-8", errors="surrogateescape")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if lines and lines[-1].rstrip("\r") == "":
        lines.pop()  # the blank line that ends the request
    if len(lines) > MAX_ATTRIBUTES:
        raise PolicyRequestError(f"more than {MAX_ATTRIBUTES} attributes")
    for line in lines:
        line = line.rstrip("\r")
        name, sep, value = line.partition("=")
        if not sep or not name or any(c.isspace() for c in name):
            raise PolicyRequestError(f"not a name=value line: {line[:80]!r}")
        attrs[name] = value
    return attrs


def format_request(attrs: Mapping[str, str]) -> bytes:
    """What Postfix sends for attrs (tests and the health probe speak it too)."""
    return "".join(f"{k}={v}\n" for k, v in attrs.items()).encode(
        "utf-8", errors="surrogateescape") + b"\n"


def split_requests(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete requests in buffer (each ending with its blank line) and the unfinished rest."""
    requests: list[bytes] = []
    start = pos = 0
    while (end := buffer.find(b"\n", pos)) >= 0:
        line, pos = buffer[pos:end + 1], end + 1
        if line.strip(b"\r\n") == b"":
            requests.append(buffer[start:pos])
            start = pos
    return requests, buffer[start:]


@dataclass(frozen=True)
class PolicyAction:
    """One answer: an access(5) action such as DUNNO, `DEFER_IF_PERMIT text`, `550 5.7.23
    text`, `PREPEND Header: value`."""

    text: str
    reason: str = ""  # for the log only

    def encode(self) -> bytes:
        # A newline would end the answer early and desynchronise the connection.
        safe = one_line(self.text)
        return f"action={safe}\n\n".encode("utf-8", errors="replace")

    @property
    def verb(self) -> str:
        return self.text.split(" ", 1)[0]


DUNNO = PolicyAction("DUNNO")


# --- SPF through our resolver ------------------------------------------------------------

_spf_local = threading.local()


def _spf_dns_lookup(name: str, qtype: str, strict: object = True,
                    timeout: float = SPF_TIMEOUT) -> list[tuple[tuple[str, str], object]]:
    """pyspf's DNSLookup, answering from the resolver of the current SPF check.

    pyspf resolves through a module-level function (`spf.DNSLookup`) that calls dnspython's
    default resolver (the host's resolv.conf). We install this one instead; it takes the
    resolver from the thread running the check, and refuses to resolve outside a check, so no
    lookup ever leaves through the host's resolver.
    """
    resolver: dns.resolver.Resolver | None = getattr(_spf_local, "resolver", None)
    if resolver is None:
        raise spf.TempError("DNS lookup outside a Mailwarden SPF check")
    lifetime = min(float(timeout), resolver.lifetime) if timeout else resolver.lifetime
    found: list[tuple[tuple[str, str], object]] = []
    try:
        answer = resolver.resolve(name, qtype, lifetime=max(lifetime, 0.1),
                                  raise_on_no_answer=False, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return found
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise spf.TempError(f"DNS {exc}") from exc
    except dns.exception.DNSException as exc:
        raise spf.TempError(f"DNS {exc}") from exc
    if answer.rrset is None:
        return found
    for rdata in answer.rrset:
        if qtype in ("A", "AAAA"):
            found.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            found.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            found.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            found.append(((name, qtype), rdata.strings))
    return found


spf.DNSLookup = _spf_dns_lookup


def make_spf_check(resolver: dns.resolver.Resolver, timeout: float = SPF_TIMEOUT) -> SpfCheck:
    """check2 (RFC 7208) with every lookup through `resolver` and `timeout` for all of it."""

    def check(ip: str, sender: str, helo: str) -> tuple[str, str]:
        if not sender and not helo:
            return "none", "no sender and no HELO name to check"
        _spf_local.resolver = resolver
        try:
            result, explanation = spf.check2(i=ip, s=sender, h=helo, querytime=timeout)
        finally:
            _spf_local.resolver = None
        return str(result).lower(), str(explanation)

    return check


# --- the decision ------------------------------------------------------------------------


def _networks(values: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(v, strict=False) for v in values]


def _in(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
        networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    return any(ip.version == n.version and ip in n for n in networks)


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().strip(".").lower() if "@" in address else ""


def _address_listed(address: str, entries: Iterable[str]) -> bool:
    """An exact address, or a domain covering the address's domain or a parent of it."""
    address = address.lower()
    domain = _domain_of(address)
    for entry in entries:
        entry = entry.lower()
        if "@" in entry:
            if entry == address:
                return True
        elif domain and (domain == entry or domain.endswith("." + entry)):
            return True
    return False


def normalise_sender(sender: str) -> str:
    """The greylist's sender: VERP and SRS-style per-message parts removed (as PMG does).

    `list+bounce-1234@example.org` and `list+bounce-5678@example.org` are one sender:
    the +extension goes, and each run of digits in the local part becomes '#'.
    """
    if not sender:
        return "<>"
    local, at, domain = sender.lower().rpartition("@")
    if not at:
        local, domain = sender.lower(), ""
    local = local.split("+", 1)[0]
    local = re.sub(r"\d+", "#", local)
    return f"{local}@{domain}" if at else local


def client_network(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, ipv4_mask: int,
                   ipv6_mask: int) -> str:
    mask = ipv4_mask if ip.version == 4 else ipv6_mask
    return str(ipaddress.ip_network(f"{ip}/{mask}", strict=False))


class RateCounter:
    """Recipients per key in a sliding hour, in minute buckets (bounded memory per key)."""

    WINDOW = 3600.0
    BUCKET = 60.0

    def __init__(self) -> None:
        self._buckets: dict[str, deque[list[float]]] = {}
        self._lock = threading.Lock()
        self._calls = 0

    def _prune(self, key: str, now: float) -> deque[list[float]]:
        buckets = self._buckets.setdefault(key, deque())
        while buckets and buckets[0][0] <= now - self.WINDOW:
            buckets.popleft()
        return buckets

    def count(self, key: str, now: float) -> int:
        with self._lock:
            return int(sum(b[1] for b in self._prune(key, now)))

    def take(self, key: str, limit: int, now: float) -> bool:
        """Count one more recipient unless the key already reached limit; False if it did."""
        with self._lock:
            self._calls += 1
            if self._calls % 1000 == 0:
                self._forget_idle(now)
            buckets = self._prune(key, now)
            if sum(b[1] for b in buckets) >= limit:
                return False
            start = now - now % self.BUCKET
            if buckets and buckets[-1][0] == start:
                buckets[-1][1] += 1
            else:
                buckets.append([start, 1])
            return True

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if not b or b[-1][0] <= now - self.WINDOW]:
            del self._buckets[key]


@dataclass
class _MessageMemory:
    spf: tuple[str, str] | None = None  # (result, explanation)
    header_sent: bool = False


@dataclass
class Policy:
    """The decisions of the policy service. Thread-safe: the server calls decide() from a
    worker pool because SPF and the greylist store block."""

    state: State
    greylist: GreylistStore | None
    spf_check: SpfCheck
    clock: Clock = time.time
    rates: RateCounter = field(default_factory=RateCounter)

    def __post_init__(self) -> None:
        self._messages: OrderedDict[str, _MessageMemory] = OrderedDict()
        self._lock = threading.Lock()
        self.update_state(self.state)

    def update_state(self, state: State) -> None:
        """A new state (SIGHUP); greylist rows and rate counters carry over."""
        self.state = state
        loopback = ["127.0.0.0/8", "::1/128"]
        self._trusted = _networks([*loopback, *state.networks.trusted])
        self._backup_mx = _networks(state.networks.backup_mx)
        self._spf_exempt = _networks(state.spf.exempt_networks)
        self._grey_exempt = _networks(state.greylisting.exempt_networks)
        self._rate_exempt = _networks(state.rate_limits.exempt_networks)

    def greylist_times(self) -> GreylistTimes:
        g = self.state.greylisting
        return GreylistTimes(delay=float(g.delay_seconds),
                             retry_window=g.retry_window_hours * 3600.0,
                             pass_lifetime=g.pass_lifetime_days * 86400.0)

    def _memory(self, attrs: Mapping[str, str]) -> _MessageMemory:
        # `instance` is unique per message within Postfix's lifetime; without it (a client
        # that is not Postfix) every request is its own message.
        key = attrs.get("instance") or attrs.get("queue_id") or ""
        if not key:
            return _MessageMemory()
        with self._lock:
            memory = self._messages.get(key)
            if memory is None:
                memory = self._messages[key] = _MessageMemory()
                while len(self._messages) > INSTANCE_MEMORY:
                    self._messages.popitem(last=False)
            else:
                self._messages.move_to_end(key)
            return memory

    def decide(self, attrs: Mapping[str, str]) -> PolicyAction:
        if attrs.get("request", "smtpd_access_policy") != "smtpd_access_policy":
            return PolicyAction("DUNNO", f"unknown request {attrs.get('request')!r}")
        if attrs.get("protocol_state", "").upper() != "RCPT":
            return PolicyAction("DUNNO", "not at RCPT")
        try:
            ip = ipaddress.ip_address(attrs.get("client_address", "").strip())
        except ValueError:
            return PolicyAction("DUNNO", "no usable client_address")
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        sender = attrs.get("sender", "").strip().lower()
        recipient = attrs.get("recipient", "").strip().lower()
        helo = attrs.get("helo_name", "").strip()
        now = self.clock()

        if _in(ip, self._backup_mx):
            return PolicyAction("DUNNO", "backup MX")
        if _in(ip, self._trusted):
            return self._outbound_rate(ip, sender, now)

        memory = self._memory(attrs)
        spf_action, spf_result = self._spf(memory, ip, sender, helo)
        if spf_action is not None:
            return spf_action
        grey = self._greylist(ip, sender, recipient, now)
        if grey is not None:
            return grey
        limit = self.state.rate_limits.client_per_hour
        if limit and not _in(ip, self._rate_exempt) \
                and not self.rates.take(f"client:{ip}", limit, now):
            return PolicyAction(f"450 4.7.1 Too many recipients from {ip} in the last hour,"
                                " try again later", "client rate limit")
        with self._lock:
            if memory.header_sent:
                return PolicyAction("DUNNO", "Received-SPF already added")
            memory.header_sent = True
        return PolicyAction(f"PREPEND Received-SPF: {spf_result}", "SPF verdict")

    def _outbound_rate(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                       sender: str, now: float) -> PolicyAction:
        limit = self.state.rate_limits.sender_per_hour
        if not limit or not sender or _in(ip, self._rate_exempt):
            return PolicyAction("DUNNO", "trusted network")
        if not self.rates.take(f"sender:{sender}", limit, now):
            return PolicyAction(f"450 4.7.1 Too many recipients from {sender} in the last hour,"
                                " try again later", "sender rate limit")
        return PolicyAction("DUNNO", "trusted network")

    def _spf(self, memory: _MessageMemory, ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
             sender: str, helo: str) -> tuple[PolicyAction | None, str]:
        """(a reject, or None) and the Received-SPF value to prepend."""
        cfg = self.state.spf
        receiver = self.state.system.hostname
        identity = "mailfrom" if sender else "helo"
        domain = _domain_of(sender) if sender else helo.lower()
        if not cfg.enabled:
            result, comment = "none", f"{receiver}: SPF checks are disabled"
        else:
            if memory.spf is None:
                memory.spf = self._run_spf(str(ip), sender, helo)
            result, explanation = memory.spf
            comment = _spf_comment(receiver, result, domain, str(ip), explanation)
        header = received_spf(result, receiver=receiver, client_ip=str(ip), sender=sender,
                              helo=helo, identity=identity, comment=comment)
        # A softfail is only a hint for the spam score unless the admin turned tagging off,
        # which makes it as final as a fail.
        rejected = (result == "fail" and cfg.reject_fail) or \
            (result == "softfail" and not cfg.tag_softfail)
        if rejected and cfg.enabled \
                and not _address_listed(f"x@{domain}", cfg.exempt_senders) \
                and not _in(ip, self._spf_exempt):
            return PolicyAction(
                f"550 5.7.23 SPF {result}: {domain or 'the sender domain'} does not allow "
                f"{ip} to send its mail", f"SPF {result}"), header
        return None, header

    def _run_spf(self, ip: str, sender: str, helo: str) -> tuple[str, str]:
        try:
            result, explanation = self.spf_check(ip, sender, helo)
        except Exception as exc:  # pyspf raises on odd input; SPF must not stop the mail
            log.warning("SPF check of %s from %s failed: %s", sender or "<>", ip, exc)
            return "temperror", f"SPF check failed: {exc}"
        if result not in SPF_RESULTS:
            return "permerror", f"unexpected SPF result {result!r}"
        return result, explanation

    def _greylist(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, sender: str,
                  recipient: str, now: float) -> PolicyAction | None:
        cfg = self.state.greylisting
        if not cfg.enabled or self.greylist is None:
            return None
        if ip.version == 6 and not cfg.ipv6:
            return None
        if _in(ip, self._grey_exempt) or (sender and _address_listed(sender, cfg.exempt_senders))\
                or _address_listed(recipient, cfg.exempt_recipients):
            return None
        net = client_network(ip, cfg.ipv4_netmask, cfg.ipv6_netmask)
        verdict = self.greylist.attempt(net, normalise_sender(sender), recipient, now,
                                        self.greylist_times())
        if verdict.passed:
            return None
        return PolicyAction(f"DEFER_IF_PERMIT 4.7.1 Greylisted, try again in "
                            f"{verdict.wait_seconds} seconds", f"greylist {verdict.outcome}")


def _spf_comment(receiver: str, result: str, domain: str, ip: str, explanation: str) -> str:
    words = {
        "pass": f"domain of {domain} designates {ip} as permitted sender",
        "fail": f"domain of {domain} does not designate {ip} as permitted sender",
        "softfail": f"domain of transitioning {domain} does not designate {ip} as permitted "
                    "sender",
        "neutral": f"{ip} is neither permitted nor denied by domain of {domain}",
        "none": f"domain of {domain} does not provide an SPF record",
        "temperror": f"error in processing during lookup of {domain}: {explanation}",
        "permerror": f"permanent error in processing domain of {domain}: {explanation}",
    }
    return f"{receiver}: {words.get(result, explanation)}"


# --- the server --------------------------------------------------------------------------


class PolicyServer:
    """Moves bytes between Postfix and a Policy; one task per connection."""

    def __init__(self, policy: Policy, *, idle_timeout: float = IDLE_TIMEOUT,
                 workers: int = 16) -> None:
        self.policy = policy
        self.idle_timeout = idle_timeout
        self.executor = ThreadPoolExecutor(max_workers=workers,
                                           thread_name_prefix="mailwarden-policy")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            while True:
                request = await self._read_request(reader)
                action = await self._answer(request)
                writer.write(action.encode())
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return  # idle, or the client went away: nothing to answer
        except (asyncio.LimitOverrunError, ValueError, PolicyRequestError) as exc:
            # Cannot find the end of this request: answer once, then close to resynchronise.
            log.warning("policy client %s sent a malformed request: %s", peer, exc)
            try:
                writer.write(PolicyAction("DUNNO").encode())
                await writer.drain()
            except ConnectionError:
                return
        finally:
            writer.close()
            # Already gone is fine: closing is all we wanted.
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        lines: list[bytes] = []
        while True:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), self.idle_timeout)
            if line.strip(b"\r\n") == b"":
                return b"".join(lines) + b"\n"
            lines.append(line)
            if len(lines) > MAX_ATTRIBUTES:
                raise PolicyRequestError(f"more than {MAX_ATTRIBUTES} attributes")

    async def _answer(self, request: bytes) -> PolicyAction:
        try:
            attrs = parse_request(request)
        except PolicyRequestError as exc:
            log.warning("malformed policy request: %s", exc)
            return DUNNO
        loop = asyncio.get_running_loop()
        try:
            action = await loop.run_in_executor(self.executor, self.policy.decide, attrs)
        except Exception:
            # A bug or a store failure must not stop the mail: DUNNO lets the other
            # restrictions and the content filter decide.
            log.exception("policy decision failed for %s", _describe(attrs))
            return DUNNO
        if action.verb != "DUNNO" or action.reason not in ("", "not at RCPT"):
            log.info("%s -> %s (%s)", _describe(attrs), action.text, action.reason)
        return action

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _describe(attrs: Mapping[str, str]) -> str:
    return (f"client={attrs.get('client_address', '?')} from=<{attrs.get('sender', '')}> "
            f"to=<{attrs.get('recipient', '')}> instance={attrs.get('instance', '')}")


def make_policy(state: State, layout: Layout, db: Database, *, clock: Clock = time.time,
                spf_check: SpfCheck | None = None) -> Policy:
    from .resolver import make_resolver

    check = spf_check or make_spf_check(make_resolver(layout))
    return Policy(state=state, greylist=GreylistStore(db), spf_check=check, clock=clock)


async def start_policy_server(state: State, layout: Layout, db: Database, *,
                              policy: Policy | None = None, host: str = "127.0.0.1",
                              port: int | None = None) -> asyncio.base_events.Server:
    """Listen on host:layout.ports.policy (or port). The PolicyServer is `server.policy_server`
    (its `.policy.update_state(...)` applies a new state)."""
    handler = PolicyServer(policy or make_policy(state, layout, db))
    server = await asyncio.start_server(handler.handle, host,
                                        layout.ports.policy if port is None else port,
                                        limit=MAX_LINE)
    server.policy_server = handler  # type: ignore[attr-defined]
    return server


async def serve_policy(state: State, layout: Layout, db: Database,
                       stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or stop is set); SIGHUP reloads the state file."""
    from ..state.load import load_state_file

    server = await start_policy_server(state, layout, db)
    handler: PolicyServer = server.policy_server  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()

    def reload() -> None:
        try:
            handler.policy.update_state(load_state_file(layout.state_file))
            log.info("state reloaded")
        except Exception:
            log.exception("state reload failed; keeping the previous state")

    async def purge() -> None:
        while True:
            policy = handler.policy
            if policy.greylist is not None:
                try:
                    removed = await loop.run_in_executor(
                        handler.executor, policy.greylist.purge, policy.clock(),
                        policy.greylist_times())
                    if removed:
                        log.info("greylist: forgot %d expired triplets", removed)
                except Exception:
                    log.exception("greylist purge failed")
            await asyncio.sleep(3600)

    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    purger = asyncio.create_task(purge())
    log.info("policy service listening on 127.0.0.1:%d", layout.ports.policy)
    try:
        await stop.wait()
    finally:
        purger.cancel()
        server.close()
        await server.wait_closed()
        handler.close()


def run_policy_service(state: State, layout: Layout, db: Database) -> None:
    """Blocking entry of the `mailwarden policy` daemon."""
    asyncio.run(serve_policy(state, layout, db))


def run_policy(layout: Layout) -> int:
    """`mailwarden policy [--root DIR]`: load the state and the store, then serve."""

    from ..state.load import load_state_file

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    state = load_state_file(layout.state_file)
    db = Database(layout.database)
    run_policy_service(state, layout, db)
    return 0
