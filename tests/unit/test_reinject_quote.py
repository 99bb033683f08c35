"""The reinjector's address quoting gives smtplib.quoteaddr's result (mail/reinject.py)."""

from __future__ import annotations

import random
import smtplib

from mailwarden.mail.reinject import _PLAIN, _quote


def test_quote_matches_smtplib() -> None:
    rng = random.Random(5)  # noqa: S311 - reproducible test input, not a secret
    alphabet = [*"ab.@<> =-+_\"[]()x1Z,;:\\'", "\u00e9", "user", "example.test"]
    plain = 0
    for _ in range(20_000):
        address = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 9)))
        plain += bool(_PLAIN.fullmatch(address))
        assert _quote(address) == (smtplib.quoteaddr(address) if address else "<>"), address
    assert plain > 20
    assert _quote("bench@sender.test") == "<bench@sender.test>"
    assert _quote("") == "<>" == smtplib.quoteaddr("")
