"""The end-to-end tier's two pytest-xdist workers: the gateway module on one, every other
boot on the other (tests/e2e/README.md, "Two guests at once").

xdist's own grouping (`--dist loadgroup` with `xdist_group` marks) does not work with
pytest 9: it renames each test's node id through an attribute pytest no longer reads, so
every test became its own group and both workers booted a gateway. Instead this plugin hands
xdist a scheduler that groups by module: xdist's load-scope scheduler with its one
documented override point, `_split_scope` (node id -> group), fenced to the xdist release it
was checked against; with any other release the tier says so and takes xdist's grouping by
module (the gateway still alone in its group; the other boots spread over both workers).
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

GATEWAY, OTHERS = "gateway", "other-boots"
CHECKED_XDIST = ("3.8",)


def group_of(nodeid: str) -> str:
    return GATEWAY if nodeid.split("::", 1)[0].endswith("test_gateway.py") else OTHERS


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    import xdist
    from xdist.scheduler import LoadScopeScheduling

    if not xdist.__version__.startswith(CHECKED_XDIST):
        warnings.warn(f"pytest-xdist {xdist.__version__} is not the release the e2e tier's "
                      f"grouping was checked against ({', '.join(CHECKED_XDIST)}): "
                      "grouping by module", stacklevel=1)
        return LoadScopeScheduling(config, log)

    class TwoGuests(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return TwoGuests(config, log)
