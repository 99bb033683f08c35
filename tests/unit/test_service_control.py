"""A layout names who reloads its daemons; the product finds the harness's by entry point."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mailwarden.control.service import NoController, UnknownServiceControl, controller_for
from mailwarden.control.systemd import SystemdController
from mailwarden.layout import Layout, appliance, sandbox
from mailwarden_dev.control import SERVICE_CONTROL, PidfileController


def test_the_appliance_is_controlled_by_systemd() -> None:
    assert isinstance(controller_for(appliance()), SystemdController)


def test_a_dry_run_sandbox_has_nothing_to_reload(tmp_path: Path) -> None:
    assert isinstance(controller_for(sandbox(tmp_path)), NoController)


def test_the_harness_controller_comes_by_entry_point(tmp_path: Path) -> None:
    layout = sandbox(tmp_path, service_control=SERVICE_CONTROL)
    again = Layout.from_json(layout.to_json())
    controller = controller_for(again)
    assert isinstance(controller, PidfileController) and controller.layout == again


def test_an_unknown_controller_is_an_error_naming_it(tmp_path: Path) -> None:
    layout = replace(sandbox(tmp_path), service_control="no-such-control")
    with pytest.raises(UnknownServiceControl,
                       match=r"'no-such-control'.*mailwarden\.service_control"):
        controller_for(layout)
