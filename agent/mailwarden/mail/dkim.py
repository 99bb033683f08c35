"""DKIM: keys (`mailwarden dkim generate`), signing outbound mail, verifying inbound mail.

Source of truth for inbound DKIM: this module (dkimpy), not Rspamd's dkim module. DMARC needs
the d= domain of every valid signature, which Rspamd's /checkv2 only reports as symbols
(R_DKIM_ALLOW with options, unstable across versions); verifying here gives the domains
directly, through the same resolver as SPF and DMARC (our Unbound), so all three agree on
what DNS said. Rspamd's DKIM symbols still count in its spam score; they decide nothing else.

Keys live in the secrets folder (0600), referenced by name from state.dkim.sign. Only
rsa-sha256 for now: dkimpy signs ed25519 only with PyNaCl, which is not a dependency.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path

import dkim
import dns.resolver

from ..errors import MailwardenError
from ..layout import Layout
from ..process import run
from ..secrets import ensure_secrets_dir
from ..state.schema import DkimKey, State
from .resolver import DnsTemporaryError, txt_records

log = logging.getLogger("mailwarden.dkim")
# dkimpy logs each failed signature at ERROR: for inbound mail that is a verdict, not an
# operational error, so its messages stay quiet unless someone lowers this logger's level.
_dkimpy_log = logging.getLogger("mailwarden.dkim.dkimpy")
_dkimpy_log.setLevel(logging.CRITICAL)

# Signed header fields. Those in OVERSIGN are signed once more than they occur, so that
# adding another instance (a second From, a Subject on a message that had none) breaks
# the signature instead of riding on it.
SIGN_HEADERS = (
    "from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id",
    "in-reply-to", "references", "mime-version", "content-type",
    "content-transfer-encoding", "list-id", "list-unsubscribe", "list-unsubscribe-post",
)
OVERSIGN = (
    "from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id",
    "mime-version", "content-type", "content-transfer-encoding",
)
MAX_SIGNATURES = 5  # verified per message: each costs a DNS lookup and an RSA operation
DNS_TIMEOUT = 5.0
_KEY_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class DkimError(MailwardenError):
    """A DKIM key cannot be generated, read or used."""

    code = "dkim_failed"


@dataclass(frozen=True)
class DkimKeyInfo:
    domain: str
    selector: str
    algorithm: str
    key_name: str  # the secret name to put in state.dkim.sign[].key
    path: Path
    dns_name: str  # <selector>._domainkey.<domain>
    txt: str  # the record's text: v=DKIM1; k=rsa; p=...

    @property
    def record(self) -> str:
        """A zone file line, the TXT split into strings of at most 255 bytes."""
        chunks = [self.txt[i:i + 255] for i in range(0, len(self.txt), 255)]
        return f"{self.dns_name}. IN TXT " + " ".join(f'"{c}"' for c in chunks)


def default_key_name(domain: str, selector: str) -> str:
    name = f"dkim-{domain}-{selector}.key"
    if _KEY_NAME_RE.match(name):
        return name
    # Long domains do not fit a secret name; a digest keeps it unique and stable.
    digest = hashlib.sha256(f"{domain}/{selector}".encode()).hexdigest()[:16]
    return f"dkim-{digest}-{selector[:32]}.key"


def generate_key(layout: Layout, domain: str, selector: str, algorithm: str = "rsa-sha256",
                 bits: int = 2048, *, key_name: str | None = None,
                 force: bool = False) -> DkimKeyInfo:
    """Write a new private key (0600) into the secrets folder and return its DNS record.

    Refuses to replace an existing key unless force: the old key's signatures on mail in
    flight would stop verifying the moment the DNS record changes.
    """
    domain = domain.strip().lower().rstrip(".")
    if algorithm != "rsa-sha256":
        raise DkimError(f"{algorithm}: only rsa-sha256 keys are supported (ed25519 signing "
                        "needs PyNaCl)")
    if not 1024 <= bits <= 4096:
        raise DkimError(f"{bits} bits: RSA keys must be 1024..4096 bits (2048 recommended)")
    name = key_name or default_key_name(domain, selector)
    if not _KEY_NAME_RE.match(name):
        raise DkimError(f"'{name}' is not a secret name")
    folder = layout.secrets_dir
    ensure_secrets_dir(folder)
    target = folder / name
    if target.exists() and not force:
        raise DkimError(f"{target} exists; use force to replace it")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        tmp_key = Path(tmp) / "key"
        # -traditional: PKCS#1 (BEGIN RSA PRIVATE KEY), the form dkimpy reads.
        run(["openssl", "genrsa", "-traditional", "-out", tmp_key, str(bits)])
        os.chmod(tmp_key, 0o600)
        public_pem = run(["openssl", "rsa", "-in", tmp_key, "-pubout"]).stdout
        if force:
            os.replace(tmp_key, target)
        else:
            try:
                # link() fails if the target appeared meanwhile: never clobber a key.
                os.link(tmp_key, target)
            except FileExistsError:
                raise DkimError(f"{target} exists; use force to replace it") from None
    txt = f"v=DKIM1; k=rsa; p={_pem_body(public_pem)}"
    return DkimKeyInfo(domain=domain, selector=selector, algorithm=algorithm, key_name=name,
                       path=target, dns_name=f"{selector}._domainkey.{domain}", txt=txt)


def _pem_body(pem: str) -> str:
    match = re.search(r"-----BEGIN PUBLIC KEY-----(.*?)-----END PUBLIC KEY-----", pem, re.S)
    if not match:
        raise DkimError("openssl printed no public key")
    return "".join(match.group(1).split())


def public_record(layout: Layout, key: DkimKey) -> DkimKeyInfo:
    """The DNS record of a configured key (to print it again)."""
    path = layout.secrets_dir / key.key
    if not path.exists():
        raise DkimError(f"DKIM key {path} does not exist")
    public_pem = run(["openssl", "rsa", "-in", path, "-pubout"]).stdout
    return DkimKeyInfo(domain=key.domain, selector=key.selector, algorithm="rsa-sha256",
                       key_name=key.key, path=path,
                       dns_name=f"{key.selector}._domainkey.{key.domain}",
                       txt=f"v=DKIM1; k=rsa; p={_pem_body(public_pem)}")


# --- signing -----------------------------------------------------------------------------


def _headers(raw: bytes) -> list[tuple[str, str]]:
    end = _header_end(raw)
    message = BytesHeaderParser().parsebytes(raw[:end] + b"\r\n")
    return [(k.lower(), str(v)) for k, v in message.items()]


def _header_end(raw: bytes) -> int:
    match = re.search(rb"\r?\n\r?\n", raw)
    return match.start() if match else len(raw)


def from_domain(raw: bytes) -> str:
    """The domain of the (first) From address, lowercased; "" when there is none."""
    values = [v for k, v in _headers(raw) if k == "from"]
    for _name, address in email.utils.getaddresses(values):
        if "@" in address:
            return address.rpartition("@")[2].strip().strip(">").rstrip(".").lower()
    return ""


def signing_key(state: State, domain: str) -> DkimKey | None:
    """The key for domain, or for its closest parent domain that has one (first listed)."""
    best: DkimKey | None = None
    for key in state.dkim.sign:
        covers = domain == key.domain or domain.endswith("." + key.domain)
        if covers and (best is None or len(key.domain) > len(best.domain)):
            best = key
    return best


def sign(raw: bytes, state: State, layout: Layout) -> bytes:
    """raw with a DKIM-Signature prepended, or raw unchanged when no key covers its From.

    Raises DkimError when a key is configured but unusable (missing file, bad key): sending
    such mail unsigned would quietly break DMARC for the domain, so the caller decides.
    """
    domain = from_domain(raw)
    key = signing_key(state, domain) if domain else None
    if key is None:
        return raw
    path = layout.secrets_dir / key.key
    try:
        private = path.read_bytes()
    except OSError as exc:
        raise DkimError(f"DKIM key for {key.domain} ({path}): {exc.strerror}") from exc
    present = [name for name, _ in _headers(raw)]
    include: list[bytes] = []
    for name in SIGN_HEADERS:
        count = present.count(name) + (1 if name in OVERSIGN else 0)
        include += [name.encode()] * count
    linesep = b"\r\n" if b"\r\n" in raw[:_header_end(raw) + 2] else b"\n"
    try:
        signature = dkim.sign(raw, key.selector.encode(), key.domain.encode(), private,
                              canonicalize=(b"relaxed", b"relaxed"),
                              include_headers=include, linesep=linesep)
    except dkim.DKIMException as exc:
        raise DkimError(f"cannot sign for {key.domain} with {key.key}: {exc}") from exc
    return bytes(signature) + raw


# --- verifying ---------------------------------------------------------------------------

DnsFunc = Callable[..., bytes | None]


def resolver_txt(resolver: dns.resolver.Resolver, timeout: float = DNS_TIMEOUT) -> DnsFunc:
    """dkimpy's dnsfunc, asking our resolver: the DKIM key record at name, or None."""

    def get_txt(name: bytes, timeout: float = timeout) -> bytes | None:
        try:
            records = txt_records(resolver, name.decode("ascii", errors="replace"),
                                  lifetime=min(timeout, resolver.lifetime))
        except DnsTemporaryError as exc:
            raise dkim.DnsTimeoutError(str(exc)) from exc
        for record in records:
            if record.lstrip().lower().startswith(b"v=dkim1"):
                return record
        return records[0] if records else None

    return get_txt


def verify(raw: bytes, resolver: dns.resolver.Resolver | DnsFunc) -> tuple[str, list[str]]:
    """(result, domains): pass when at least one signature verifies, with the d= of every
    valid one; temperror when none verified and a key lookup timed out; fail when signatures
    are present but none verified; none without signatures.

    resolver is our dnspython resolver, or a dkimpy dnsfunc (unit tests).
    """
    lookup = resolver if callable(resolver) and not isinstance(
        resolver, dns.resolver.Resolver) else resolver_txt(resolver)
    timeouts: list[bytes] = []
    if b"dkim-signature" not in raw.lower():
        # No signature anywhere: "none", as below, without dkimpy splitting the whole
        # message into lines first (about 10 ms for a 2 MB message).
        return "none", []

    def dnsfunc(name: bytes, timeout: float = DNS_TIMEOUT) -> bytes | None:
        # dkimpy turns a DNS timeout into "signature invalid"; remember it to say temperror.
        try:
            return lookup(name, timeout=timeout)
        except dkim.DnsTimeoutError:
            timeouts.append(name)
            raise

    try:
        checker = dkim.DKIM(raw, logger=_dkimpy_log, timeout=int(DNS_TIMEOUT))
    except Exception as exc:  # dkimpy raises assorted errors on broken messages
        log.info("message unparsable for DKIM: %s", exc)
        return ("fail" if b"dkim-signature" in raw.lower() else "none"), []
    count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    if count == 0:
        return "none", []
    domains: list[str] = []
    for index in range(min(count, MAX_SIGNATURES)):
        try:
            valid = checker.verify(idx=index, dnsfunc=dnsfunc)
        except Exception as exc:  # a broken signature or key is a failed signature
            log.debug("DKIM signature %d invalid: %s", index, exc)
            continue
        domain = (checker.domain or b"").decode("ascii", errors="replace").lower()
        if valid and domain and domain not in domains:
            domains.append(domain)
    if domains:
        return "pass", domains
    return ("temperror" if timeouts else "fail"), []


__all__ = [
    "DkimError", "DkimKeyInfo", "default_key_name", "from_domain", "generate_key",
    "public_record", "resolver_txt", "sign", "signing_key", "verify",
]
