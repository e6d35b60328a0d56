"""The end-to-end modules that the canary suite re-runs run once a session, not twice.

tests/test_privacy_canary_suite.py runs its MODULES in a child pytest, on canary people, and fails
(naming the failed tests) when any of them fails. When that test is selected in a session, the
tests of MODULES are deselected from the session itself: they run inside it, and every one of them
still runs once. Run alone (``pytest tests/test_e2e_embedded.py``, or ``-k``/``-m`` leaving the
canary test out), they run as usual. ``PIVOT_CANARY_DEDUPE=0`` runs them both ways (in the session and in the
child).

Registered by tests/conftest.py (``pytest_plugins``).
"""

from __future__ import annotations

import os

import pytest

CANARY_TEST = "tests/test_privacy_canary_suite.py::test_end_to_end_suite_on_canary_people_leaks_nothing_into_logs"
DEDUPE_ENV = "PIVOT_CANARY_DEDUPE"
_DESELECTED = pytest.StashKey[int]()


def rerun_by_canary(nodeid: str, modules: tuple[str, ...]) -> bool:
    """Whether ``nodeid`` is one of the tests the canary suite re-runs (a module of ``modules`` or a test
    named there, with any parameters)."""
    return any(nodeid == m or nodeid.startswith((f"{m}::", f"{m}[")) for m in modules)


@pytest.hookimpl(trylast=True)  # after -k and -m: only when the canary test itself is still selected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(DEDUPE_ENV, "1").strip() == "0" or not any(i.nodeid == CANARY_TEST for i in items):
        return
    from tests.test_privacy_canary_suite import MODULES

    rerun = [i for i in items if rerun_by_canary(i.nodeid, MODULES)]
    if rerun:
        config.hook.pytest_deselected(items=rerun)
        items[:] = [i for i in items if not rerun_by_canary(i.nodeid, MODULES)]
    config.stash[_DESELECTED] = len(rerun)


def pytest_report_collectionfinish(config: pytest.Config) -> str | None:
    count = config.stash.get(_DESELECTED, 0)
    if not count:
        return None
    tests = "test runs" if count == 1 else "tests run"
    return (f"{count} end-to-end {tests} inside {CANARY_TEST.split('::')[0]} (on canary people), not twice "
            f"({DEDUPE_ENV}=0: both)")
