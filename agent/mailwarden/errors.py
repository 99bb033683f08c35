"""The one exception hierarchy of the agent.

Every error carries a stable ``code`` for programs (API clients, scripts reading the CLI's
exit status) and a message for a person. Edges (CLI, API, SMTP) translate them; nothing
inside swallows them.
"""

from __future__ import annotations

from dataclasses import dataclass


class MailwardenError(Exception):
    """Base of every error the agent raises on purpose."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FieldError:
    """One problem in a state file, located by the path of the field."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.path or '(top level)'}{where}: {self.message}"


class StateError(MailwardenError):
    """The state file cannot be read or does not validate."""

    code = "state_invalid"

    def __init__(self, errors: list[FieldError], source: str = "state") -> None:
        self.errors = errors
        self.source = source
        count = len(errors)
        summary = f"{source}: {count} error{'s' if count != 1 else ''}"
        super().__init__(summary + "\n" + "\n".join(f"  {e}" for e in errors))


class ConflictError(MailwardenError):
    """A change was based on a revision that is no longer current."""

    code = "conflict"

    def __init__(self, base: int | None, current: int, message: str) -> None:
        self.base = base
        self.current = current
        super().__init__(message)


class RevisionNotFound(MailwardenError):
    code = "revision_not_found"


class RenderError(MailwardenError):
    """A template is missing, broken, or references something the view lacks."""

    code = "render_failed"


class ServiceError(MailwardenError):
    """A managed service refused its configuration, failed to reload, or is unhealthy."""

    code = "service_failed"

    def __init__(self, service: str, message: str) -> None:
        self.service = service
        super().__init__(f"{service}: {message}")


class CommandError(ServiceError):
    """An external command exited non-zero."""

    code = "command_failed"

    def __init__(self, argv: list[str], returncode: int, output: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.output = output
        tail = output.strip()[-2000:]
        super().__init__(argv[0], f"`{' '.join(argv)}` exited {returncode}: {tail}")


class AlreadySetUp(MailwardenError):
    """The appliance is set up: first-boot answers are not taken any more."""

    code = "already_set_up"


class ScannerError(MailwardenError):
    """Rspamd or clamd did not answer, or answered nonsense."""

    code = "scanner_failed"

    def __init__(self, scanner: str, message: str) -> None:
        self.scanner = scanner
        super().__init__(f"{scanner}: {message}")


class LearnError(MailwardenError):
    """Rspamd would not learn a message (too few words to learn from, Bayes turned off):
    the message is fine, this one cannot be learned; `code` says why."""

    code = "learn_refused"

    def __init__(self, message: str, code: str = "learn_refused") -> None:
        super().__init__(message)
        self.code = code


class StoreError(MailwardenError):
    """The runtime store refused an operation (unknown id, wrong status...)."""

    code = "store_error"


class NotFound(StoreError):
    code = "not_found"
