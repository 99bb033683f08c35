"""Notifications to the administrators: a test notification sent now, and the daily report or
the alert mail as it would go out now. Their settings are the state's `notifications` section
(/api/settings/notifications)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import falcon
from pydantic import Field

from ..mail.notify import NoRecipients, Notice, Notifier, ServiceStatus, hand_over
from ..mail.reinject import RecipientsRefused
from ..state.schema import State
from ..store.users import Audit
from .bodies import NotificationTest, accepts
from .errors import BadInput
from .quarantine import Deliver
from .replies import Reply, returns
from .resources import ADMIN, READERS


class NotificationReply(Reply):
    kind: str = Field(description="test, report or alert.")
    recipients: list[str]
    subject: str
    text: str


class AlertsPreview(Reply):
    conditions: list[str] = Field(description="Every alert condition now, mailed or not.")
    mail: NotificationReply | None = Field(
        description="The mail the next run would send for the conditions not mailed yet; "
        "null when there is none.")


def _reply(notice: Notice) -> NotificationReply:
    return NotificationReply(kind=notice.kind, recipients=notice.recipients,
                             subject=str(notice.message["Subject"]),
                             text=notice.message.get_content())


def _nobody(exc: NoRecipients) -> BadInput:
    return BadInput(f"{exc.message}; nothing sent", "notifications.recipients")


@dataclass
class NotificationTestResource:
    notifier: Notifier
    state: Callable[[], State]
    deliver: Deliver
    audit: Audit
    roles = {"POST": ADMIN}

    @returns(NotificationReply)
    @accepts(NotificationTest, optional=True)
    def on_post(self, req: falcon.Request, resp: falcon.Response,
                body: NotificationTest | None) -> None:
        """Send a test notification to the recipients now."""
        state = self.state()
        try:
            notice = self.notifier.test_notice(state)
            hand_over(notice, state, self.deliver)
        except NoRecipients as exc:
            raise _nobody(exc) from None
        except RecipientsRefused as exc:
            if not exc.permanent:
                raise
            raise BadInput(f"Postfix refused the recipients: {exc.message}",
                           "notifications.recipients") from None
        self.audit.record(req.context.user.username, "notifications.test_sent",
                          ", ".join(notice.recipients), source_ip=req.remote_addr)
        resp.media = _reply(notice).model_dump(mode="json")


@dataclass
class NotificationReportResource:
    notifier: Notifier
    state: Callable[[], State]
    roles = {"GET": READERS}

    @returns(NotificationReply)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The daily report as it would go out now; nothing is sent."""
        try:
            resp.media = _reply(self.notifier.report(self.state())).model_dump(mode="json")
        except NoRecipients as exc:
            raise _nobody(exc) from None


@dataclass
class NotificationAlertsResource:
    notifier: Notifier
    state: Callable[[], State]
    services: Callable[[], Sequence[ServiceStatus]]
    roles = {"GET": READERS}

    @returns(AlertsPreview)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Every alert condition now and the mail the next run would send (nothing sent,
        nothing recorded), whether or not service alerts are on."""
        try:
            check = self.notifier.alerts(self.state(), self.services())
        except NoRecipients as exc:
            raise _nobody(exc) from None
        resp.media = AlertsPreview(
            conditions=list(check.current.values()),
            mail=_reply(check.notice) if check.notice is not None else None,
        ).model_dump(mode="json")


__all__ = ["NotificationAlertsResource", "NotificationReportResource",
           "NotificationTestResource"]
