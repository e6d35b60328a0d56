"""The Défi Santé alert ledger: which message raised each alert Communication, and its body.

An ER alert Communication has a deterministic id per (Encounter, kind); it must be raised once,
whichever instance maps the messages of the visit (the A04, a resent A04 with a new MSH-10, the
A08 adding the NAM). :meth:`AlertLedger.claim` decides that in one statement
(``INSERT … ON CONFLICT DO NOTHING``): the first message to claim the id raises the alert; a later
claim by the *same* message (a worker that crashed before committing reads it again, on this
instance or another) raises it again, identical, so an alert is never lost; a claim by another
message raises nothing. The body is kept so an A11 can cancel what was sent even before the
Communication reached this instance's store.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gateway.eventlog.state.db import StateDb, open_state

FILE_NAME = "defisante.sqlite"
SCHEMA = "ledger"


class AlertLedger:
    """``claim`` / ``sent`` over one :class:`StateDb` (its ``alert_ledger`` table)."""

    def __init__(self, db: StateDb) -> None:
        self.db = db

    def claim(self, communication_id: str, raised_by: str, body: dict[str, Any],
              prior: tuple[str, dict[str, Any]] | None = None) -> bool:
        """True when ``raised_by`` (a message: its meta.source) raises this Communication: it claimed
        it now, or had claimed it before. False: another message raised it already. ``prior``: (the
        message, the body) of the Communication as an older version left it in a store, claimed
        first when the ledger has no row yet."""
        owner, first = prior if prior is not None else (raised_by, body)
        text = json.dumps(first, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        with self.db.transaction() as tx:
            tx.execute("INSERT INTO alert_ledger(communication_id, raised_by, body, at) VALUES (?,?,?,?) "
                       "ON CONFLICT (communication_id) DO NOTHING", (communication_id, owner, text,
                                                                     int(time.time() * 1000)))
            rows = tx.execute("SELECT raised_by FROM alert_ledger WHERE communication_id = ?", (communication_id,))
        return bool(rows) and str(rows[0][0]) == raised_by

    def sent(self, communication_id: str) -> dict[str, Any] | None:
        """The body of a Communication raised, None when none was."""
        rows = self.db.run("SELECT body FROM alert_ledger WHERE communication_id = ?", (communication_id,))
        if not rows:
            return None
        body: dict[str, Any] = json.loads(rows[0][0])
        return body

    def close(self) -> None:
        self.db.close()


def open_ledger(state_url: str, data_dir: Path | None) -> AlertLedger:
    """The ledger of these settings: ``data_dir/defisante.sqlite``, or PostgreSQL (``state_url``)."""
    return AlertLedger(open_state(state_url, data_dir, FILE_NAME, SCHEMA))
