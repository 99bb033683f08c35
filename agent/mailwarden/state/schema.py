"""The schema of /etc/mailwarden/state.yaml: every setting that shapes the services.

Each default lives here and nowhere else (templates and start-up code never invent one), with
a description that docs/state.md shows. A nearly empty file (version, hostname, one relay
domain and its internal server, trusted networks) makes a safe gateway.

Unknown keys are errors: a typo must never silently fall back to a default.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .rules import Rule, RuleObjects, default_rule_objects, default_rules
from .types import (
    Days,
    Domain,
    Email,
    Host,
    Hostname,
    IPAddress,
    Line,
    Network,
    Port,
    Seconds,
    SecretName,
    TimeOfDay,
)

CURRENT_VERSION = 4

TlsLevel = Literal["none", "may", "encrypt", "dane", "verify", "secure"]
ScannerFailure = Literal["tempfail", "accept_tagged"]


class Section(BaseModel):
    """Base of every mapping in the state file: strict types, unknown keys refused."""

    # `pattern=` constraints run on pydantic's Rust engine, where `$` is the end of the text
    # only; Python's re would also let a trailing newline through (a split config line).
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, frozen=True,
                              regex_engine="rust-regex")


# --- system -----------------------------------------------------------------------------


class ForwardZone(Section):
    zone: Domain | Literal["."] = Field(
        description="DNS zone answered by the given servers instead of by recursion "
        "(e.g. an internal Active Directory zone). '.' forwards everything."
    )
    servers: list[IPAddress] = Field(
        min_length=1, description="Name servers for this zone (IP addresses)."
    )
    port: Port = Field(53, description="Port of those name servers.")


class Dns(Section):
    resolver: Literal["local", "forward"] = Field(
        "local",
        description="'local': the appliance's own recursive resolver (Unbound) asks the "
        "internet's name servers directly. Needed for DNSBLs, which refuse queries from "
        "large public resolvers. 'forward': Unbound forwards everything to `forwarders`.",
    )
    forwarders: list[IPAddress] = Field(
        default_factory=list, description="Upstream resolvers when resolver is 'forward'."
    )
    forward_zones: list[ForwardZone] = Field(
        default_factory=list, description="Zones resolved by specific servers."
    )
    dnssec: bool = Field(True, description="Validate DNSSEC (required for DANE).")

    @model_validator(mode="after")
    def _forwarders_needed(self) -> Dns:
        if self.resolver == "forward" and not self.forwarders:
            raise ValueError("resolver 'forward' needs at least one address in forwarders")
        return self


class System(Section):
    hostname: Hostname = Field(
        description="Fully qualified name of this gateway; it must match the PTR record "
        "of its public address and is used in the SMTP greeting and HELO."
    )
    admin_email: Email | None = Field(
        None,
        description="Where notifications for the administrator go "
        "(default: postmaster of the first relay domain).",
    )
    dns: Dns = Field(default_factory=Dns, description="How the gateway resolves names.")


# --- networks ---------------------------------------------------------------------------


class Networks(Section):
    trusted: list[Network] = Field(
        default_factory=list,
        description="Internal networks allowed to send outbound mail through port 26 "
        "(mail from them is signed with DKIM and scanned as outbound). Loopback is always "
        "trusted.",
    )
    management: list[Network] = Field(
        default_factory=list,
        description="Networks allowed to reach the web UI/API (8006) and, if enabled, SSH. "
        "Empty: the trusted networks.",
    )
    backup_mx: list[Network] = Field(
        default_factory=list,
        description="Your own backup MX hosts: exempt from greylisting, SPF and postscreen.",
    )
    ssh: bool = Field(False, description="Allow SSH (key-only) from the management networks.")


# --- domains ----------------------------------------------------------------------------


class Transport(Section):
    host: Host = Field(description="The internal mail server of this domain (name or IP).")
    port: Port = Field(25, description="Its SMTP port.")
    mx_lookup: bool = Field(
        False,
        description="Look up MX records of `host` (true) or connect to it directly (false, "
        "the usual choice for an internal server).",
    )
    protocol: Literal["smtp", "lmtp"] = Field("smtp", description="Delivery protocol.")
    tls: TlsLevel = Field(
        "may",
        description="TLS towards the internal server: none, may (opportunistic), encrypt "
        "(mandatory, unauthenticated), dane, verify or secure (certificate checked).",
    )


# An https address without query or fragment: it is put into links and mail as it is.
HttpsUrl = Annotated[str, Field(pattern=r"^https://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~/-]*)?$",
                                max_length=200)]
Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


class DigestOverride(Section):
    enabled: bool | None = Field(None, description="Send digests for this domain or not.")
    frequency: Literal["daily", "weekly"] | None = Field(None, description="daily or weekly.")
    time: TimeOfDay | None = Field(None, description="Local time the digests go out (HH:MM).")
    weekday: Weekday | None = Field(None, description="Day of a weekly digest.")


class Digest(Section):
    enabled: bool = Field(
        False, description="Send each recipient with newly quarantined mail a digest on the "
        "schedule below; nothing is sent when nothing new was held since the last one."
    )
    frequency: Literal["daily", "weekly"] = Field("daily", description="daily or weekly.")
    time: TimeOfDay = Field("07:00", description="Local time (the appliance's time zone) the "
                            "digests go out, HH:MM.")
    weekday: Weekday = Field("monday", description="Day of a weekly digest.")
    ticket_lifetime_days: Annotated[int, Field(ge=1, le=60)] = Field(
        7, description="Days the links in a digest work (release, delete, allow, block, "
        "open the portal); each is signed and bound to its recipient."
    )
    sender: Email | None = Field(
        None, description="From address of the digests (default: system.admin_email, else "
        "postmaster@ the first relay domain)."
    )
    portal_url: HttpsUrl | None = Field(
        None, description="Address of the web interface the links point at, as recipients "
        "reach it (default: https://<system.hostname>:8006)."
    )


class RelayDomain(Section):
    name: Domain = Field(description="A domain this gateway accepts mail for.")
    transport: Transport = Field(description="Where accepted mail for this domain goes.")
    subdomains: bool = Field(False, description="Also accept mail for all its subdomains.")
    verify_recipients: bool = Field(
        False,
        description="Ask the internal server whether a recipient exists before accepting "
        "(Postfix reject_unverified_recipient): unknown users get 550 instead of a bounce.",
    )
    digest: DigestOverride | None = Field(
        None, description="This domain's own digest schedule: each key given here replaces "
        "the one of quarantine.digest for its recipients."
    )
    comment: str = Field("", description="Free text for the administrators.")


# --- mail -------------------------------------------------------------------------------


class Smarthost(Section):
    host: Host = Field(description="Relay host for outbound mail.")
    port: Port = Field(25, description="Its port.")
    mx_lookup: bool = Field(False, description="Look up MX records of host.")


class Mail(Section):
    max_size_mb: Annotated[int, Field(ge=1, le=2048)] = Field(
        25, description="Largest message accepted, in MiB (Postfix message_size_limit)."
    )
    filter_mode: Literal["after_queue", "before_queue"] = Field(
        "after_queue",
        description="after_queue: Postfix accepts, then the content filter decides (robust, "
        "mail is never lost). before_queue: the filter decides during the SMTP dialogue, so "
        "spam and viruses can be rejected with 5xx instead of being quarantined or dropped.",
    )
    banner: Line = Field(
        "$myhostname ESMTP",
        description="Text after 220 in the SMTP greeting (smtpd_banner); Postfix "
        "variables such as $myhostname are allowed.",
    )
    max_recipients: Annotated[int, Field(ge=1, le=100000)] = Field(
        1000, description="Most recipients accepted per message."
    )
    queue_lifetime_days: Annotated[int, Field(ge=1, le=30)] = Field(
        5, description="How long undeliverable mail is retried before it bounces."
    )
    smtputf8: bool = Field(True, description="Offer SMTPUTF8 (internationalised addresses).")
    reject_unknown_sender_domain: bool = Field(
        True, description="Reject senders whose domain has no A/MX record."
    )
    helo_required: bool = Field(True, description="Require HELO/EHLO before MAIL FROM.")
    smarthost: Smarthost | None = Field(
        None, description="Send outbound mail through this relay instead of directly."
    )
    max_connections_per_client: Annotated[int, Field(ge=0, le=10000)] = Field(
        50, description="Simultaneous connections one client may hold (0: unlimited)."
    )
    max_messages_per_minute: Annotated[int, Field(ge=0, le=1000000)] = Field(
        0, description="Messages one client may send per minute (0: unlimited)."
    )
    rules_budget_ms: Annotated[int, Field(ge=10, le=60000)] = Field(
        2000,
        description="CPU time the content filter may spend on the rules of one message, in "
        "milliseconds. A message that needs more is quarantined ('blocked', or 'virus' when "
        "one was found) with the rule name rule-budget-exceeded, logged and tracked: nothing "
        "is lost and nothing unchecked is delivered (docs/rules.md).",
    )


# --- spam -------------------------------------------------------------------------------


class SpamLevels(Section):
    tag: float = Field(6.0, description="Score from which mail is tagged as spam.")
    quarantine: float = Field(10.0, description="Score from which mail is quarantined.")
    reject: float = Field(
        15.0,
        description="Score from which mail is rejected during the SMTP dialogue "
        "(before_queue mode; after_queue mode quarantines it instead).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> SpamLevels:
        if not self.tag <= self.quarantine <= self.reject:
            raise ValueError(
                f"levels must satisfy tag <= quarantine <= reject "
                f"(got {self.tag} / {self.quarantine} / {self.reject})"
            )
        return self


class SymbolScore(Section):
    symbol: Annotated[str, Field(pattern=r"^[A-Z0-9_]{1,64}$")] = Field(
        description="Rspamd symbol name."
    )
    score: float = Field(description="Score to give it.")


class Bayes(Section):
    enabled: bool = Field(True, description="Statistical (Bayes) classifier, stored in Redis.")
    autolearn: bool = Field(
        False, description="Learn automatically from very clear spam and ham."
    )
    min_learns: Annotated[int, Field(ge=1, le=100000)] = Field(
        200, description="Learned messages of each class before Bayes scores anything."
    )


class Spam(Section):
    enabled: bool = Field(True, description="Scan mail with Rspamd.")
    levels: SpamLevels = Field(default_factory=SpamLevels, description="Spam score levels.")
    subject_tag: Line = Field(
        "[SPAM]", description="Text the 'tag subject' action of the default rules prepends."
    )
    bayes: Bayes = Field(default_factory=Bayes, description="Bayes classifier.")
    fuzzy_check: bool = Field(
        True, description="Ask rspamd.com's public fuzzy hash storage (needs internet)."
    )
    rbl: bool = Field(True, description="Rspamd's DNS blocklists (RBL/URIBL) in scoring.")
    symbol_scores: list[SymbolScore] = Field(
        default_factory=list, description="Score overrides for Rspamd symbols."
    )
    max_scan_size_kb: Annotated[int, Field(ge=64, le=1048576)] = Field(
        10240, description="Larger messages skip the spam scan (and are marked so)."
    )
    timeout_seconds: Annotated[int, Field(ge=1, le=300)] = Field(
        30, description="How long the filter waits for Rspamd."
    )
    on_failure: ScannerFailure = Field(
        "tempfail",
        description="Rspamd down or too slow: 'tempfail' answers 4xx so the sender retries "
        "(nothing is lost); 'accept_tagged' delivers with an X-Mailwarden-Spam-Scan: failed "
        "header.",
    )


# --- virus ------------------------------------------------------------------------------


class Signatures(Section):
    # freshclam always runs: clamd without fresh signatures is not a choice offered (version
    # 4 dropped the `freshclam` switch, which never turned it off).
    checks_per_day: Annotated[int, Field(ge=1, le=50)] = Field(
        12, description="freshclam update checks per day."
    )
    mirrors: list[Host] = Field(
        default_factory=lambda: ["database.clamav.net"],
        description="Signature mirrors (DatabaseMirror); a local mirror for offline sites.",
    )


class Virus(Section):
    enabled: bool = Field(True, description="Scan mail with ClamAV.")
    skip_plain_text: bool = Field(
        True,
        description="Do not send clamd messages that cannot carry malware: every MIME part "
        "inline text/plain without a file name, no uuencoded or yEnc file in the text, "
        "nothing malformed. Any attachment, HTML or other part, or parser defect: the whole "
        "message is scanned. The message's X-Mailwarden header and its tracking record say "
        "when clamd was skipped. Saves a clamd round trip for most mail (docs/architecture.md).",
    )
    scan: Literal["parts", "message"] = Field(
        "parts",
        description="What clamd is sent. 'parts': each decoded part that can carry malware "
        "(attachments, HTML, any part that is not inline plain text), one connection, so "
        "clamd does not parse and decode the MIME again. The whole message still goes when "
        "our parser found anything wrong with it (clamd's own parser then sees it) and, while "
        "heuristic_phishing is on, when it has HTML (clamd checks links only in mail it "
        "parses). 'message': the whole message always (clamd's mail-format signatures also "
        "apply; about twice clamd's CPU for mail with attachments).",
    )
    detect_pua: bool = Field(False, description="Also report potentially unwanted applications.")
    block_encrypted_archives: bool = Field(
        False, description="Treat encrypted archives (which cannot be scanned) as viruses."
    )
    heuristic_phishing: bool = Field(True, description="ClamAV's phishing heuristics.")
    max_scan_size_mb: Annotated[int, Field(ge=1, le=4000)] = Field(
        100, description="Most data ClamAV unpacks and scans per message."
    )
    max_file_size_mb: Annotated[int, Field(ge=1, le=4000)] = Field(
        25, description="Largest single file ClamAV scans."
    )
    max_recursion: Annotated[int, Field(ge=1, le=64)] = Field(
        16, description="Deepest nesting of archives ClamAV unpacks."
    )
    max_files: Annotated[int, Field(ge=1, le=1000000)] = Field(
        10000, description="Most files ClamAV unpacks from one message."
    )
    exceeding_limits: Literal["virus", "pass"] = Field(
        "virus",
        description="A message over the limits above (a zip bomb, say): treat as virus "
        "('Heuristics.Limits.Exceeded') or let it pass unscanned.",
    )
    timeout_seconds: Annotated[int, Field(ge=1, le=600)] = Field(
        60, description="How long the filter waits for clamd."
    )
    on_failure: ScannerFailure = Field(
        "tempfail",
        description="clamd down or too slow: 'tempfail' (4xx, the sender retries) or "
        "'accept_tagged' (deliver with an X-Mailwarden-Virus-Scan: failed header).",
    )
    signatures: Signatures = Field(default_factory=Signatures, description="Updates.")


# --- greylisting ------------------------------------------------------------------------


class Greylisting(Section):
    enabled: bool = Field(True, description="Greylist unknown (client, sender, recipient).")
    delay_seconds: Seconds = Field(
        120, description="A retry is accepted after this many seconds."
    )
    retry_window_hours: Annotated[int, Field(ge=1, le=720)] = Field(
        48, description="A first attempt not retried within this many hours is forgotten."
    )
    pass_lifetime_days: Days = Field(
        36, description="A triplet that passed stays known for this many days."
    )
    ipv4_netmask: Annotated[int, Field(ge=8, le=32)] = Field(
        24, description="Clients of the same IPv4 network share a triplet."
    )
    ipv6_netmask: Annotated[int, Field(ge=16, le=128)] = Field(
        64, description="Clients of the same IPv6 network share a triplet."
    )
    ipv6: bool = Field(False, description="Greylist IPv6 clients too.")
    exempt_networks: list[Network] = Field(
        default_factory=list, description="Clients never greylisted."
    )
    exempt_senders: list[Domain | Email] = Field(
        default_factory=list, description="Sender domains or addresses never greylisted."
    )
    exempt_recipients: list[Domain | Email] = Field(
        default_factory=list, description="Recipient domains or addresses never greylisted."
    )


# --- spf and rate limits (the policy service) ------------------------------------------


class Spf(Section):
    enabled: bool = Field(True, description="Check SPF of inbound mail in the policy service.")
    reject_fail: bool = Field(
        True, description="Reject at RCPT when the sender's domain says the client is not "
        "allowed (SPF fail)."
    )
    tag_softfail: bool = Field(
        True, description="Softfail only adds to the spam score (Rspamd's R_SPF_SOFTFAIL); "
        "off: a softfail is rejected at RCPT like a fail (exemptions apply)."
    )
    exempt_senders: list[Domain] = Field(
        default_factory=list,
        description="Sender domains whose SPF is not enforced (broken records of partners).",
    )
    exempt_networks: list[Network] = Field(
        default_factory=list, description="Clients exempt from SPF (e.g. forwarders you trust)."
    )


class RateLimits(Section):
    client_per_hour: Annotated[int, Field(ge=0, le=10000000)] = Field(
        0, description="Recipients one client IP may send to per hour (0: no limit)."
    )
    sender_per_hour: Annotated[int, Field(ge=0, le=10000000)] = Field(
        0,
        description="Recipients one authenticated/trusted sender address may send to per hour, "
        "outbound (0: no limit). Catches a hijacked internal account.",
    )
    exempt_networks: list[Network] = Field(
        default_factory=list, description="Clients never rate limited."
    )


# --- postscreen -------------------------------------------------------------------------


class Dnsbl(Section):
    zone: Domain = Field(description="DNS blocklist zone (e.g. zen.spamhaus.org).")
    weight: Annotated[int, Field(ge=-100, le=100)] = Field(
        1, description="Added to the client's score when listed (negative for allowlists)."
    )
    filter: Annotated[str, Field(pattern=r"^127\.[0-9.\[\];.]+$")] | None = Field(
        None,
        description="Only these answers count (Postfix syntax, e.g. 127.0.0.[2..11]).",
    )


class Postscreen(Section):
    enabled: bool = Field(True, description="Screen clients before smtpd on port 25.")
    pregreet: bool = Field(True, description="Drop clients that talk before the greeting.")
    dnsbl: list[Dnsbl] = Field(
        default_factory=lambda: [
            Dnsbl(zone="zen.spamhaus.org", weight=3, filter="127.0.0.[2..11]"),
            Dnsbl(zone="bl.spamcop.net", weight=1),
            Dnsbl(zone="list.dnswl.org", weight=-2, filter="127.0.[0..255].[1..3]"),
        ],
        description="DNS blocklists and their weights.",
    )
    dnsbl_threshold: Annotated[int, Field(ge=1, le=100)] = Field(
        3, description="Score at which a client is refused."
    )
    dnsbl_action: Literal["enforce", "drop", "ignore"] = Field(
        "enforce",
        description="enforce: answer 550 to every command; drop: close the connection; "
        "ignore: only log.",
    )
    allowlist_threshold: Annotated[int, Field(ge=-100, le=0)] = Field(
        -1, description="Score at or below which a client skips the other tests."
    )
    deep_protocol_tests: bool = Field(
        False,
        description="Pipelining/non-SMTP/bare-newline tests. They defer a new client's first "
        "attempt, like greylisting.",
    )
    allow_networks: list[Network] = Field(
        default_factory=list, description="Clients postscreen always lets through."
    )
    block_networks: list[Network] = Field(
        default_factory=list, description="Clients postscreen always refuses."
    )


# --- tls --------------------------------------------------------------------------------


class InboundTls(Section):
    enabled: bool = Field(True, description="Offer STARTTLS on ports 25 and 26.")
    certificate: SecretName = Field(
        "smtp",
        description="Name of the certificate in the secrets folder: <name>.crt (chain) and "
        "<name>.key. A self-signed one is generated on first boot.",
    )
    require_on_submission: bool = Field(
        False, description="Require TLS from internal senders on port 26."
    )


Destination = Annotated[str, Field(pattern=r"^(\.?[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:\d+)?$")]


class TlsPolicy(Section):
    destination: Destination = Field(
        description="Domain ('example.com'), subdomains ('.example.com') or next hop "
        "('[192.0.2.10]:25')."
    )
    level: TlsLevel = Field(description="TLS level towards that destination.")
    match: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9.:_-]+$")]] = Field(
        default_factory=list,
        description="For verify/secure: names or fingerprints the certificate must match.",
    )


class Tls(Section):
    inbound: InboundTls = Field(default_factory=InboundTls, description="Receiving mail.")
    outbound_default: TlsLevel = Field(
        "may", description="TLS level for outbound deliveries without a policy."
    )
    policies: list[TlsPolicy] = Field(
        default_factory=list, description="Per-destination outbound TLS policy."
    )
    min_protocol: Literal["TLSv1.2", "TLSv1.3"] = Field(
        "TLSv1.2", description="Oldest TLS version for mandatory TLS."
    )


# --- dkim -------------------------------------------------------------------------------


class DkimKey(Section):
    domain: Domain = Field(description="Signing domain (d=).")
    selector: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] = Field(
        description="Selector (s=): the key is published at <selector>._domainkey.<domain>."
    )
    key: SecretName = Field(
        description="Private key file name in the secrets folder (an RSA key: signatures are "
        "rsa-sha256)."
    )


class Dkim(Section):
    verify: bool = Field(True, description="Check DKIM signatures of inbound mail.")
    sign: list[DkimKey] = Field(
        default_factory=list, description="Keys to sign outbound mail with."
    )
    dmarc: Literal["off", "report", "enforce"] = Field(
        "enforce",
        description="DMARC on inbound mail: off; report (record results only); enforce "
        "(apply the sender domain's p=quarantine / p=reject).",
    )


# --- quarantine -------------------------------------------------------------------------


class Lifetimes(Section):
    spam: Days = Field(7, description="Days spam stays in the quarantine.")
    virus: Days = Field(14, description="Days viruses stay in the quarantine.")
    attachment: Days = Field(14, description="Days removed attachments stay.")
    blocked: Days = Field(7, description="Days blocked mail stays (for release on request).")


class Quarantine(Section):
    lifetimes: Lifetimes = Field(default_factory=Lifetimes, description="Retention.")
    digest: Digest = Field(
        default_factory=Digest,
        description="Quarantine digests: mail to each recipient listing what was held for "
        "them, with links to act on it (docs/operations.md, \"Digests\").",
    )
    user_portal: bool = Field(
        True, description="Users may log in to manage their own quarantined mail."
    )
    user_release_virus: bool = Field(False, description="Users may release viruses (never wise).")


# --- notifications ----------------------------------------------------------------------


class DailyReport(Section):
    enabled: bool = Field(
        False, description="Send the administrators a report of the last 24 hours once a day: "
        "messages by outcome and by domain, top senders and recipients, the quarantine's "
        "size and the ClamAV signatures' age."
    )
    time: TimeOfDay = Field("07:00", description="Local time (the appliance's time zone) the "
                            "report goes out, HH:MM.")


class ServiceAlerts(Section):
    enabled: bool = Field(
        False, description="Mail the administrators when a service has failed or was "
        "restarted, when the ClamAV signatures are older than the limit below, or when a "
        "disk is fuller than the threshold below; once per condition, again only after it "
        "cleared and came back."
    )
    signature_max_age_hours: Annotated[int, Field(ge=1, le=8760)] = Field(
        48, description="Alert when the newest ClamAV signature database was built longer "
        "ago than this (freshclam is not getting updates)."
    )
    disk_used_percent: Annotated[int, Field(ge=1, le=100)] = Field(
        90, description="Alert when the file system holding the store and the quarantine, or "
        "the one holding the Postfix queue, is fuller than this percentage."
    )


class Notifications(Section):
    recipients: list[Email] | None = Field(
        None, description="Who receives the notifications below (default: "
        "system.admin_email). A notification turned on with nobody to send it to is an "
        "error.", max_length=20,
    )
    sender: Email | None = Field(
        None, description="From address (and envelope sender) of the notifications "
        "(default: postmaster@<system.hostname>)."
    )
    virus_to_admin: bool = Field(
        False, description="Mail the recipients a notice for each message the filter "
        "quarantines as a virus: sender, recipients, subject, virus name and quarantine id."
    )
    daily_report: DailyReport = Field(default_factory=DailyReport,
                                      description="The daily report.")
    service_alerts: ServiceAlerts = Field(default_factory=ServiceAlerts,
                                          description="Alerts about the gateway's health.")

    def enabled(self) -> list[str]:
        """The paths of the notifications turned on."""
        on = [("virus_to_admin", self.virus_to_admin),
              ("daily_report.enabled", self.daily_report.enabled),
              ("service_alerts.enabled", self.service_alerts.enabled)]
        return [path for path, value in on if value]


# --- the whole file ---------------------------------------------------------------------


class State(Section):
    version: Literal[4] = Field(
        description="Format version of this file; older versions are migrated forward."
    )
    system: System = Field(description="This gateway.")
    networks: Networks = Field(default_factory=Networks, description="Networks and access.")
    domains: list[RelayDomain] = Field(
        min_length=1, description="Relay domains and where their mail goes."
    )
    mail: Mail = Field(default_factory=Mail, description="SMTP behaviour.")
    spam: Spam = Field(default_factory=Spam, description="Spam filtering (Rspamd).")
    virus: Virus = Field(default_factory=Virus, description="Virus scanning (ClamAV).")
    greylisting: Greylisting = Field(default_factory=Greylisting, description="Greylisting.")
    spf: Spf = Field(default_factory=Spf, description="SPF checks (policy service).")
    rate_limits: RateLimits = Field(
        default_factory=RateLimits, description="Recipient rate limits (policy service)."
    )
    postscreen: Postscreen = Field(
        default_factory=Postscreen, description="Connection screening on port 25."
    )
    tls: Tls = Field(default_factory=Tls, description="TLS in and out.")
    dkim: Dkim = Field(default_factory=Dkim, description="DKIM and DMARC.")
    quarantine: Quarantine = Field(default_factory=Quarantine, description="The quarantine.")
    notifications: Notifications = Field(
        default_factory=Notifications,
        description="Mail from the appliance to its administrators: virus notices, the daily "
        "report, service alerts (docs/operations.md, \"Notifications\").",
    )
    rule_objects: RuleObjects = Field(
        default_factory=default_rule_objects,
        description="Named objects the rules refer to: who (email, domain, regex, network), "
        "what (spam, virus, content_type, filename, archive_filename, header, body, size) "
        "and when (timeframe). See docs/rules.md.",
    )
    rules: list[Rule] = Field(
        default_factory=default_rules,
        description="Rules of the content filter, evaluated by priority per recipient; the "
        "first matching rule with a final action (accept, block, reject, quarantine) decides.",
    )

    @property
    def admin_email(self) -> str:
        return self.system.admin_email or f"postmaster@{self.domains[0].name}"

    @property
    def notification_recipients(self) -> list[str]:
        """Who the notifications go to; empty only when none is on (a check refuses that)."""
        given = self.notifications.recipients
        if given is not None:
            return list(given)
        return [self.system.admin_email] if self.system.admin_email else []

    @property
    def notification_sender(self) -> str:
        return self.notifications.sender or f"postmaster@{self.system.hostname}"


__all__ = ["CURRENT_VERSION", "Section", "State"]
