"""Versioned schema migrations: numbered SQL files applied once, in order, at start-up.

``migrations/<schema>/NNNN_name.sql`` runs on both engines; ``NNNN_name.sqlite.sql`` or
``NNNN_name.postgresql.sql`` on one engine only (the other engine records the version as applied
with nothing to do). Each schema's versions are recorded in ``schema_migrations(schema, version)``;
a migration and its record commit together, under the lock ``migrate``, so instances starting at
the same moment apply each migration exactly once. A database at a newer version than this
gateway knows is refused at start-up (an older gateway must not write a newer schema).
"""

from __future__ import annotations

import re
from importlib import resources

from gateway.errors import ConfigError
from gateway.eventlog.state.db import StateDb

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+(?:\.(sqlite|postgresql))?\.sql$")
_LEDGER = ("CREATE TABLE IF NOT EXISTS schema_migrations (schema TEXT NOT NULL, version INTEGER NOT NULL, "
           "name TEXT NOT NULL, PRIMARY KEY (schema, version))")


def migrations(schema: str) -> list[tuple[int, str, str | None, str]]:
    """(version, file name, engine or None, SQL) of a schema, in order."""
    folder = resources.files("gateway.eventlog.state") / "migrations" / schema
    out = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match is not None:
            out.append((int(match.group(1)), entry.name, match.group(2), entry.read_text(encoding="utf-8")))
    if not out:
        raise ConfigError(f"no migrations for the shared-state schema {schema!r}")
    return sorted(out)


def migrate(db: StateDb, schema: str, known: list[tuple[int, str, str | None, str]] | None = None) -> int:
    """Apply what is missing (``known``: the schema's files, read from the package by default);
    return the schema's version."""
    known = migrations(schema) if known is None else known
    latest = max(v for v, *_ in known)
    with db.transaction(lock="migrate") as tx:
        tx.execute(_LEDGER)
        done = {int(r[0]) for r in tx.execute("SELECT version FROM schema_migrations WHERE schema = ?", (schema,))}
        if done and max(done) > latest:
            raise ConfigError(f"PIVOT_STATE_URL: the {schema} schema is at version {max(done)}, newer than "
                              f"this gateway's {latest}; run the newer gateway or a fresh database")
        for version, name, engine, sql in known:
            if version in done:
                continue
            if engine in (None, db.engine):
                for statement in _statements(sql):
                    tx.execute(statement)
            tx.execute("INSERT INTO schema_migrations(schema, version, name) VALUES (?,?,?) "
                       "ON CONFLICT DO NOTHING", (schema, version, name))
            done.add(version)
    return latest


def _statements(sql: str) -> list[str]:
    """The file's statements (split at ``;`` ending a line; ``--`` comment lines dropped)."""
    text = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*$", text, flags=re.MULTILINE) if s.strip()]
