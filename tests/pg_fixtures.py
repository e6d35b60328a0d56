"""Pytest fixtures for a real PostgreSQL server (Debian's postgresql-15), started by the tests.

Registered by tests/conftest.py (``pytest_plugins``).

- ``pg_server`` (session): one cluster, ``initdb`` + ``pg_ctl start`` on a free loopback port in a
  directory of its own (owned by the ``postgres`` user when the tests run as root: the server
  refuses to run as root), trust authentication for the role ``pivot``; stopped at the end.
- ``pg_url`` (function): a fresh, empty database on that server for the test:
  ``postgresql://pivot@127.0.0.1:PORT/t…``.
- ``pg_schema_url`` (function): a fresh schema in one database of the session (the URL sets
  ``search_path``): as good as a fresh database for the code, much cheaper to make.
- ``state_url`` (function, two params): ``""`` (SQLite) then ``pg_schema_url``: a contract suite on
  both engines.

Without the server binaries (``/usr/lib/postgresql/*/bin``, or ``PIVOT_PG_BIN``) the tests that
need PostgreSQL are skipped; ``make test`` installs Debian's ``postgresql`` first, so in CI they run.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kafka_fixtures import free_port


def pg_bin() -> Path | None:
    """The directory of initdb/pg_ctl, or None."""
    configured = os.environ.get("PIVOT_PG_BIN")
    candidates = [configured] if configured else sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file():
            return Path(folder)
    return None


@dataclass
class PgServer:
    """One running cluster."""

    bin: Path
    root: Path
    port: int
    user: str | None  # run as this OS user (root → postgres), None: as ourselves

    @property
    def admin_url(self) -> str:
        return f"postgresql://pivot@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://pivot@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        cmd = [*(["runuser", "-u", self.user, "--"] if self.user else []), *args]
        return subprocess.run(cmd, check=check, capture_output=True, timeout=60)

    def start(self) -> PgServer:
        data = self.root / "data"
        self._run(str(self.bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "pivot", "-E", "UTF8",
                  "--no-sync")
        self._run(str(self.bin / "pg_ctl"), "-D", str(data), "-w", "-l", str(self.root / "server.log"), "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                  "-c max_connections=200", "start")
        return self

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop", check=False)

    def create_database(self) -> str:
        import psycopg

        name = f"t{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_pg() -> PgServer:
    """A new cluster (tests and the bench): skip when the binaries are missing."""
    folder = pg_bin()
    if folder is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql; make test does it)")
    # as root the server runs as ``postgres``, which must reach its directory: /tmp, not a TMPDIR under
    # a 0700 directory of root's (the canary suite's child run sets one)
    root = Path(tempfile.mkdtemp(prefix="pivot-pg-", dir="/tmp" if os.geteuid() == 0 else None))
    user: str | None = None
    if os.geteuid() == 0:
        user = "postgres"
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    os.chmod(root, 0o700)
    return PgServer(folder, root, free_port(), user).start()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = start_pg()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh database of the session's server."""
    return pg_server.create_database()


@pytest.fixture(scope="session")
def pg_shared_url(pg_server: PgServer) -> str:
    """One database of the session's server, holding a schema per ``pg_schema_url`` test."""
    return pg_server.create_database()


@pytest.fixture
def pg_schema_url(pg_shared_url: str) -> str:
    """A fresh, empty schema, the connection's only ``search_path``: to the code, a fresh database
    (its own tables and migration ledger), at ~1 ms instead of a CREATE DATABASE's 300-400 ms on 2
    busy cores. Advisory locks are per database, so tests of one session share their names."""
    import psycopg

    name = f"s{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_shared_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    return f"{pg_shared_url}?options=-csearch_path%3D{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest) -> str:
    """A test on both engines: ``""`` (SQLite, PIVOT_STATE_URL unset) or a fresh PostgreSQL schema."""
    return "" if request.param == "sqlite" else str(request.getfixturevalue("pg_schema_url"))
