"""Wait until the workers have consumed everything appended so far (CLI --wait, tests, bench)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.app import Gateway


def wait_drained(gateway: Gateway, timeout_s: float = 600.0, settle_s: float = 0.5) -> bool:
    """True once every worker has been idle for ``settle_s`` seconds with nothing left to consume
    (False on timeout). Idle alone is not enough on a loaded machine: a worker whose poll has not yet
    woken up looks idle while records wait for it, so the embedded log's lag is checked too."""
    deadline = time.monotonic() + timeout_s
    idle_since: float | None = None
    while time.monotonic() < deadline:
        if all(w.idle.is_set() for w in gateway.workers) and not any(w.lag() for w in gateway.workers):
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= settle_s:
                return True
        else:
            idle_since = None
        time.sleep(0.05)
    return False
