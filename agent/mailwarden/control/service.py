"""Service control: how the apply transaction reloads the daemons it changed.

The appliance uses systemd (control.systemd). A layout names its service control
(Layout.service_control); the names built into the product are "systemd" and "none" (nothing
runs yet, nothing to reload). Any other name is looked up in the `mailwarden.service_control`
entry point group: the development distribution registers its pid-file controller for its
private sandboxes there, so the product never imports the harness and the appliance's wheel
carries none of it.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Protocol, cast

from ..errors import MailwardenError
from ..layout import Layout
from ..mail.notify import ServiceStatus
from .systemd import WATCHED, SystemdController, unit_status

ENTRY_POINT_GROUP = "mailwarden.service_control"


class Controller(Protocol):
    """Reloads a managed service (systemd on the appliance, the harness in a sandbox).

    `restart` asks for a full stop and start where the change is one a reload cannot take
    (Target.restart).
    """

    def reload(self, service: str, *, restart: bool = False) -> None: ...

    def is_running(self, service: str) -> bool: ...


class NoController:
    """For a first render before any daemon runs: nothing to reload."""

    def reload(self, service: str, *, restart: bool = False) -> None:
        return None

    def is_running(self, service: str) -> bool:
        return False


class UnknownServiceControl(MailwardenError):
    code = "unknown_service_control"


# What an entry point in the group must name: a callable from the layout to a controller.
ControllerFactory = Callable[[Layout], Controller]

BUILT_IN: dict[str, ControllerFactory] = {
    "systemd": lambda layout: SystemdController(),
    "none": lambda layout: NoController(),
}


def controller_for(layout: Layout) -> Controller:
    """The controller the layout names."""
    name = layout.service_control
    factory = BUILT_IN.get(name)
    if factory is None:
        found = entry_points(group=ENTRY_POINT_GROUP, name=name)
        if not found:
            raise UnknownServiceControl(
                f"the layout under {layout.root} names the service control {name!r}, which no "
                f"installed package provides (entry point group {ENTRY_POINT_GROUP}); a "
                "development sandbox needs the development distribution: "
                "pip install -e devtools")
        factory = cast(ControllerFactory, next(iter(found)).load())
    return factory(layout)


def service_status(layout: Layout) -> list[ServiceStatus]:
    """The watched services as their supervisor sees them, for the service alerts. systemd
    says each unit's state and its restarts. Elsewhere (a development sandbox) the layout's
    controller says only whether a service runs, for those that wrote a pid file (the ones
    this sandbox started; Postfix always): restarts are not counted there."""
    if layout.service_control == "systemd":
        return unit_status()
    controller = controller_for(layout)
    found = []
    for name in WATCHED:
        pidfile = layout.pidfile(name)
        if name != "postfix" and (pidfile is None or not pidfile.exists()):
            continue
        running = controller.is_running(name)
        found.append(ServiceStatus(name, running, "running" if running else "stopped"))
    return found


__all__ = ["ENTRY_POINT_GROUP", "Controller", "NoController", "UnknownServiceControl",
           "controller_for", "service_status"]
