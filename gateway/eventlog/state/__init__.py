"""Shared state: what every gateway instance must decide once, beside the log (the log's state).

The log (embedded or Kafka) carries the messages; the tables here hold what the intake and the
workers decide about them and must agree on across instances: the identity index, the accepted
messages (dedupe), the intake→worker handoff, the alert ledger and the Défi Santé register. All of
it is derived from, or guards, the log's records, hence its place in the log package.

One code path, two engines (:mod:`gateway.eventlog.state.db`): SQLite files under
``PIVOT_DATA_DIR`` on the embedded defaults, one PostgreSQL database when ``PIVOT_STATE_URL`` is set
(shared by every instance). Schemas are versioned, numbered SQL files applied at start-up
(:mod:`gateway.eventlog.state.migrate`).
"""

from gateway.eventlog.state.db import Row, StateDb, StateUnavailable, Tx, open_state

__all__ = ["Row", "StateDb", "StateUnavailable", "Tx", "open_state"]
