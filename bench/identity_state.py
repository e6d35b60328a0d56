"""Identity resolution on both engines (issue #15): ms per message, serial, SQLite file vs PostgreSQL.

    .venv/bin/python -m bench.identity_state [N]      # default 2,000 distinct ER registrations

The messages (gateway.samples.er_message: a NAM and a site MRN each, a visit, next of kin,
diagnoses) are mapped first; only ``IdentityResolver.resolve`` is timed, one message after the
other, on a SQLite index in a fresh data dir and on a fresh PostgreSQL database (a cluster started
for the run, tests/pg_fixtures.py: loopback, fsync off). Reported: ms per message (mean, p50, p99)
SQL statements per message (one round trip each on PostgreSQL), and CPU ms per message of this
process and of the PostgreSQL backend (what the wall time is made of on an idle machine, plus one
loopback round trip per statement).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.eventlog.state import db as state_db
from gateway.identity import IdentityResolver
from gateway.pipeline import Pipeline
from gateway.samples import er_message
from mappings import IdentifierSystems, MapResult, Profiles

_NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _mapped(n: int) -> list[MapResult]:
    spine = Pipeline(Profiles.load(None, "America/Montreal"), IdentifierSystems.load(None), identity=None)
    out = []
    for i in range(n):
        outcome = spine.run(er_message(i), _NOW)
        assert outcome.result is not None, outcome.error
        out.append(outcome.result)
    return out


class _Counted:
    """Counts the statements of every transaction (both engines' Tx classes; an ``executemany``
    counts once: one call, one round trip on PostgreSQL)."""

    n = 0

    @classmethod
    def install(cls) -> None:
        for tx in (state_db._SqliteTx, state_db._PgTx):
            original, original_many = tx.execute, tx.executemany

            def execute(self: Any, sql: str, params: Any = (), _original: Any = original) -> Any:
                cls.n += 1
                return _original(self, sql, params)

            def executemany(self: Any, sql: str, rows: Any, _original: Any = original_many) -> None:
                cls.n += 1
                _original(self, sql, rows)

            tx.execute = execute  # type: ignore[method-assign]
            tx.executemany = executemany  # type: ignore[method-assign]


def _cpu_s(pid: int | None) -> float:
    """CPU seconds of this process, or of the local process ``pid`` (the PostgreSQL backend)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _backend_pid(resolver: IdentityResolver) -> int | None:
    with resolver.index.db.transaction() as tx:
        return int(tx.execute("SELECT pg_backend_pid()")[0][0]) if resolver.index.db.engine == "postgresql" else None


def _run(resolver: IdentityResolver, results: list[MapResult]) -> dict[str, float]:
    times = []
    before = _Counted.n
    backend = _backend_pid(resolver)
    cpu = (_cpu_s(None), _cpu_s(backend) if backend else 0.0)
    for result in results:
        t = time.perf_counter()
        resolver.resolve(result)
        times.append((time.perf_counter() - t) * 1000)
    client, server = _cpu_s(None) - cpu[0], (_cpu_s(backend) - cpu[1]) if backend else 0.0
    times.sort()
    return {"mean": statistics.fmean(times), "p50": times[len(times) // 2], "p99": times[int(len(times) * 0.99)],
            "statements": (_Counted.n - before) / len(results), "client_cpu": client * 1000 / len(results),
            "server_cpu": server * 1000 / len(results)}


def bench(n: int) -> dict[str, dict[str, float]]:
    from tests.pg_fixtures import start_pg

    _Counted.install()
    results = _mapped(n)
    out = {}
    data = Path(tempfile.mkdtemp(prefix="pivot-bench-identity-"))
    resolver = IdentityResolver(data)
    try:
        out["SQLite (data dir)"] = _run(resolver, results)
    finally:
        resolver.close()
        shutil.rmtree(data, ignore_errors=True)
    server = start_pg()
    try:
        resolver = IdentityResolver(None, server.create_database())
        try:
            out["PostgreSQL (loopback)"] = _run(resolver, results)
        finally:
            resolver.close()
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
    return out


def report(n: int, results: dict[str, dict[str, float]]) -> None:
    print(f"identity resolution, {n:,} distinct ER registrations, serial (resolve only, mapping excluded)")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall times grow with it, CPU times less)")
    print(f"{'  engine':<26}{'mean ms':>9}{'p50 ms':>9}{'p99 ms':>9}{'SQL/msg':>9}{'client CPU':>12}{'server CPU':>12}")
    for name, r in results.items():
        print(f"{'  ' + name:<26}{r['mean']:>9.2f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['statements']:>9.1f}"
              f"{r['client_cpu']:>9.2f} ms{r['server_cpu']:>9.2f} ms")


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    report(count, bench(count))
