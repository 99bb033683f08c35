"""The harness's own error."""

from __future__ import annotations

from mailwarden.errors import MailwardenError


class HarnessError(MailwardenError):
    """A private daemon instance did not start or become healthy."""

    code = "harness_failed"
