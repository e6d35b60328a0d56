"""SQL lives in gateway/fhirstore/ and gateway/eventlog/ only (issue #14): the rules and the console
ask the store through named queries (gateway/fhirstore/queries.py, gateway/eventlog/tail.py,
gateway/eventlog/audit_store.py), never ``store.reading()`` with raw SQL.

The scan reads the syntax tree of every module under gateway/ (comments and docstrings do not
count): a call of ``.execute(``/``.executemany(``/``.executescript(``/``.reading()``, a connection
handed out (``writer.conn``) or an import of ``sqlite3``, outside those two packages fails the test,
naming the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

from gateway.fhirstore import FhirStore, queries

GATEWAY = Path(__file__).resolve().parents[1] / "gateway"
SQL_HOMES = ("fhirstore", "eventlog")
BANNED_CALLS = frozenset({"execute", "executemany", "executescript", "reading"})
BANNED_ATTRS = frozenset({"conn"})  # a store or log connection handed out (``writer.conn``): ask the store instead

# Exceptions (none left: identity/index.py, dedupe.py and handoff.py moved into gateway/eventlog/state/,
# subscriptions/state.py into gateway/fhirstore/subscription_state.py). An entry whose file no longer
# holds SQL (or is gone) fails the test too, so the list cannot go stale.
ALLOWED: frozenset[str] = frozenset()  # nothing: every SQL statement is in the two packages


def sql_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) of every SQL use in one module's source."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in BANNED_CALLS:
            found.append((node.lineno, f".{node.func.attr}("))
        elif isinstance(node, ast.Attribute) and node.attr in BANNED_ATTRS:
            found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, "import sqlite3") for alias in node.names if alias.name.split(".")[0] == "sqlite3"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlite3":
            found.append((node.lineno, "from sqlite3 import"))
    return sorted(found)


def _scan() -> dict[str, list[tuple[int, str]]]:
    out: dict[str, list[tuple[int, str]]] = {}
    for path in sorted(GATEWAY.rglob("*.py")):
        rel = path.relative_to(GATEWAY).as_posix()
        if rel.split("/", 1)[0] in SQL_HOMES:
            continue
        text = path.read_text(encoding="utf-8")
        if not any(word in text for word in ("sqlite3", *BANNED_CALLS, *BANNED_ATTRS)):  # most modules: no parse needed
            continue
        uses = sql_uses(text)
        if uses:
            out[rel] = uses
    return out


def test_sql_only_in_the_store_and_the_event_log() -> None:
    found = _scan()
    outside = [f"gateway/{rel}:{line}: {what}" for rel, uses in found.items() if rel not in ALLOWED
               for line, what in uses]
    assert not outside, "SQL outside gateway/fhirstore/ and gateway/eventlog/ (add a named query there):\n" + \
        "\n".join(outside)
    stale = sorted(ALLOWED - set(found))
    assert not stale, f"no SQL left in {stale}: remove them from ALLOWED"


def test_the_scan_sees_each_kind_of_use_and_ignores_text() -> None:
    source = '''
"""Docs may say store.reading() and conn.execute("SELECT 1")."""
import sqlite3
from sqlite3 import Error
def f(store, conn):  # conn.executemany( in a comment
    with store.reading() as c:
        c.execute("SELECT 1")
    conn.executemany("x", [])
    conn.executescript("x")
    execute(conn, 1)  # a function of ours named execute: not a database call
'''
    assert [what for _line, what in sql_uses(source)] == [
        "import sqlite3", "from sqlite3 import", ".reading(", ".execute(", ".executemany(", ".executescript("]


def test_named_queries_answer_as_the_sql_did(store: FhirStore) -> None:
    ident = {"system": "urn:site:mrn", "value": "M1"}
    store.upsert_many([{"resourceType": "Patient", "id": "a", "identifier": [ident], "birthDate": "1950-01-02"},
                       {"resourceType": "Patient", "id": "b", "identifier": [ident]},
                       {"resourceType": "Communication", "id": "c1", "status": "completed"}])
    first = queries.latest_seq(store, "Communication")
    store.delete("Patient", "b")
    store.delete("Communication", "c1")
    assert queries.ids_with_identifier(store, "Patient", [("urn:site:mrn", "M1"), ("urn:x", "y")]) == ["a"]
    assert queries.ids_with_identifier(store, "Patient", []) == []
    after = queries.versions_after(store, "Communication", 0, 10)
    assert [body is None for _seq, body in after] == [False, True]  # the version, then its deletion
    assert after[0][0] == first
    assert queries.latest_seq(store, "Communication") == after[1][0]
    assert queries.versions_after(store, "Communication", after[1][0], 10) == []
    snap = queries.current_projected(store, {"Patient": ("birthDate",)})
    assert snap.version == queries.store_version(store) == after[1][0]
    assert snap.resources["Patient"] == [{"id": "a", "meta": {"source": None}, "birthDate": "1950-01-02"}]
