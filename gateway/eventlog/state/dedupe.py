"""Index of accepted messages (sending application|facility + MSH-10) for duplicate detection.

A resend of an accepted message is ACKed again and changes nothing. The index is part of the
shared state (:mod:`gateway.eventlog.state`): ``PIVOT_DATA_DIR/state.sqlite`` on the embedded
defaults, the ``accepted`` table of ``PIVOT_STATE_URL`` otherwise — shared by every instance, so a
resend reaching another instance than the first copy is recognised as a resend too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.eventlog.state.db import StateDb, StateUnavailable, open_state

log = logging.getLogger("pivot.dedupe")
FILE_NAME = "state.sqlite"
SCHEMA = "dedupe"


class DedupeIndex:
    """``seen`` / ``add`` / ``forget`` over one :class:`StateDb` (its ``accepted`` table)."""

    def __init__(self, db: StateDb) -> None:
        self.db = db

    def seen(self, sender: str, control_id: str) -> bool:
        """True when accepted before. The state unreachable: False (logged) — the intake then fails
        at ``add`` (after the append) and answers AR, so nothing is acknowledged unrecorded."""
        try:
            rows = self.db.read("SELECT 1 FROM accepted WHERE sender = ? AND control_id = ?", (sender, control_id))
        except StateUnavailable:
            log.warning("dedupe index unavailable sender=%s control_id=%s", sender, control_id)
            return False
        return bool(rows)

    def add(self, sender: str, control_id: str) -> None:
        """Record an accepted message (StateUnavailable, a PublishError, when the state is down)."""
        self.db.run("INSERT INTO accepted(sender, control_id, at) VALUES (?,?,?) "
                    "ON CONFLICT (sender, control_id) DO NOTHING", (sender, control_id, int(time.time())))

    def add_many(self, keys: Sequence[tuple[str, str]]) -> None:
        """``add`` of each (sender, control id) of ``keys``, in one transaction (a bulk intake batch)."""
        if not keys:
            return
        at = int(time.time())
        with self.db.transaction() as tx:
            tx.executemany("INSERT INTO accepted(sender, control_id, at) VALUES (?,?,?) "
                           "ON CONFLICT (sender, control_id) DO NOTHING", [(s, c, at) for s, c in keys])

    def forget(self, sender: str, control_id: str) -> None:
        """Drop an entry (a dead letter replayed after its AA must be processed again)."""
        self.db.run("DELETE FROM accepted WHERE sender = ? AND control_id = ?", (sender, control_id))

    def close(self) -> None:
        self.db.close()


def open_dedupe(state_url: str, data_dir: Path | None) -> DedupeIndex:
    """The index of these settings: ``data_dir/state.sqlite``, or PostgreSQL when ``state_url`` is set."""
    return DedupeIndex(open_state(state_url, data_dir, FILE_NAME, SCHEMA))
