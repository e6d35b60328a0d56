"""The shared-state seam on both engines: migrations, all-or-nothing, the lock across connections."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.eventlog.state.db import PostgresDb, SqliteDb, StateDb, StateUnavailable
from gateway.eventlog.state.migrate import migrate, migrations

_KNOWN = [(1, "0001_init.sql", None, "CREATE TABLE counter (id TEXT PRIMARY KEY, n BIGINT NOT NULL);\n"
                                      "INSERT INTO counter(id, n) VALUES ('c', 0);\n"),
          (2, "0002_pg.postgresql.sql", "postgresql", "CREATE INDEX counter_n ON counter(n);\n"),
          (3, "0003_more.sql", None, "-- a comment line\nALTER TABLE counter ADD COLUMN note TEXT;\n")]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(request.param)


def _open(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> StateDb:
    if engine == "sqlite":
        return SqliteDb(tmp_path / "state.sqlite")
    return PostgresDb(request.getfixturevalue("pg_url"))


def test_migrations_apply_once_in_order(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    db = _open(engine, tmp_path, request)
    try:
        assert migrate(db, "selftest", _KNOWN) == 3
        assert migrate(db, "selftest", _KNOWN) == 3  # a second start: nothing applied again (else a duplicate row)
        with db.transaction() as tx:
            assert tx.execute("SELECT id, n, note FROM counter") == [("c", 0, None)]
            versions = tx.execute("SELECT version FROM schema_migrations WHERE schema = ? ORDER BY version",
                                  ("selftest",))
        assert [int(v[0]) for v in versions] == [1, 2, 3]
        with pytest.raises(ConfigError, match="newer than this gateway"):
            migrate(db, "selftest", _KNOWN[:2])
    finally:
        db.close()


def test_a_failed_transaction_leaves_nothing(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    db = _open(engine, tmp_path, request)
    try:
        migrate(db, "selftest", _KNOWN)

        def fail_midway() -> None:
            with db.transaction() as tx:
                tx.execute("UPDATE counter SET n = ? WHERE id = ?", (41, "c"))
                tx.executemany("INSERT INTO counter(id, n) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
                               [("d", 1), ("e", 2)])
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            fail_midway()
        with db.transaction() as tx:
            assert tx.execute("SELECT id, n FROM counter ORDER BY id") == [("c", 0)]
            assert tx.execute("SELECT count(*) FROM counter WHERE note LIKE '%x%'") == [(0,)]  # '%' passes through
    finally:
        db.close()


def test_the_lock_serialises_connections(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Two connections (two instances) read-modify-write one row under the same lock: no update lost."""
    first = _open(engine, tmp_path, request)
    migrate(first, "selftest", _KNOWN)
    second = PostgresDb(first.url) if isinstance(first, PostgresDb) else SqliteDb(tmp_path / "state.sqlite")

    def bump(db: StateDb) -> None:
        for _ in range(60):
            with db.transaction(lock="counter") as tx:
                (n,), = tx.execute("SELECT n FROM counter WHERE id = 'c'")
                tx.execute("UPDATE counter SET n = ? WHERE id = 'c'", (int(n) + 1,))

    threads = [threading.Thread(target=bump, args=(db,)) for db in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with first.transaction() as tx:
        assert tx.execute("SELECT n FROM counter WHERE id = 'c'") == [(120,)]
    first.close()
    second.close()


def test_a_read_does_not_wait_for_a_writer(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """``read`` (the intake's resend check, on the ACK path) never waits behind another connection's
    open write transaction: it sees the last committed state (on SQLite it took the write lock before)."""
    first = _open(engine, tmp_path, request)
    migrate(first, "selftest", _KNOWN)
    second = PostgresDb(first.url) if isinstance(first, PostgresDb) else SqliteDb(tmp_path / "state.sqlite")
    writing, release = threading.Event(), threading.Event()

    def hold() -> None:
        with second.transaction(lock="counter") as tx:
            tx.execute("UPDATE counter SET n = 7 WHERE id = 'c'")
            writing.set()
            release.wait(30)

    writer = threading.Thread(target=hold)
    writer.start()
    try:
        assert writing.wait(30)
        done: list[object] = []
        reader = threading.Thread(target=lambda: done.append(first.read("SELECT n FROM counter WHERE id = 'c'")))
        reader.start()
        reader.join(5)
        assert done == [[(0,)]]  # answered while the writer still holds its transaction open
    finally:
        release.set()
        writer.join(30)
    assert first.read("SELECT n FROM counter WHERE id = 'c'") == [(7,)]
    first.close()
    second.close()


def test_postgres_down_is_unavailable_not_a_crash(pg_server: object) -> None:
    with pytest.raises(StateUnavailable, match="PIVOT_STATE_URL"):
        PostgresDb("postgresql://pivot@127.0.0.1:1/nothing")


def test_every_packaged_schema_has_numbered_migrations() -> None:
    from importlib import resources

    folder = resources.files("gateway.eventlog.state") / "migrations"
    schemas = [e.name for e in folder.iterdir() if e.is_dir() and not e.name.startswith("__")]
    for schema in schemas:
        versions = [v for v, *_ in migrations(schema)]
        assert versions == list(range(1, len(versions) + 1)), schema
