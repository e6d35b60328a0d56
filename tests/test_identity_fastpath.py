"""Issue #14: the identity resolver's shortcuts for new resources change no byte (differential test).

Two shortcuts skip work that cannot change anything (gateway/identity/README.md, "The index", "Cost
per message"): ``mappings.merge.DIRECT_NEW`` (a resource merged onto nothing is the mapped resource,
every unit at the message's time) and ``gateway.identity.resolve.SKIP_UNSEEN`` (a message whose
Provenance the index had never seen was never resolved: its journal holds only what this resolution
wrote). A varied feed — new people (bench.peer), the shared corpus's ADT messages, NAMs arriving
later, A08 updates with ``""`` deletions, A40/A34 merges, A11/A12/A13 cancels, older messages after
newer ones, refusals, then the last 40 resolved again — gives the same MapResults and the same
index rows with the shortcuts on and off.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import mappings.merge
import tests.test_identity_survivorship as survivorship_messages
from bench.peer import feed
from gateway.errors import GatewayError, MapError
from gateway.identity import IdentityResolver, resolve
from mappings import MapResult
from tests.test_identity_messages import adt, mapped
from tests.test_identity_resolver import _statements
from tests.test_identity_survivorship import adt as pid_adt
from tests.test_mappings_corpus import corpus_messages, map_one, supported

NAM = "TREJ40010112"
OTHER_NAM = "GAGH45552299"
_TABLES = ("person", "ident", "resource", "cluster", "dup", "journal", "provenance", "clock")
Item = Callable[[], MapResult]


def _nulled(raw: bytes) -> bytes:
    """The message with PID-11 (address) and PID-13 (home phone) sent as ``""`` (deletes)."""
    head, pid, tail = raw.partition(b"\rPID|")
    end = tail.index(b"\r")
    return head + pid + tail[:end] + b'|||""||""' + tail[end:]


def _scenarios() -> list[bytes]:
    """Links, merges, cancels, stale writes, refusals (tests/test_identity_resolver.py's messages)."""
    return [
        adt("A04", site="HSA", mrn="HSA1", nam=NAM, visit="V1", control_id="s1", when="202601010800"),
        _nulled(adt("A04", site="HSJ", mrn="HSJ5", visit="V3", control_id="s2", when="202601020800")),
        adt("A08", site="HSJ", mrn="HSJ5", nam=NAM, visit="V3", control_id="s3", when="202601020900"),
        adt("A08", site="HSA", mrn="HSA1", nam=NAM, family="Tremblay-Roy", visit="V1", control_id="s4",
            when="202601030800"),
        adt("A08", site="HSA", mrn="HSA1", nam=NAM, family="Tremblay", visit="V1", control_id="s5",
            when="202601020700"),  # older than what was applied
        adt("A04", site="HSA", mrn="HSA2", visit="V4", control_id="s6", when="202601010800"),
        _nulled(adt("A04", site="HSA", mrn="HSA3", visit="V5", control_id="s7", when="202601020800")),
        adt("A40", site="HSA", mrn="HSA2", mrg="HSA3", control_id="s8", when="202601030800"),
        adt("A08", site="HSA", mrn="HSA3", visit="V5", control_id="s9", when="202601040800"),
        adt("A40", site="HSA", mrn="HSA2", mrg="HSA9", control_id="s10", when="202601050800"),
        adt("A04", site="HLA", mrn="HLA2", nam=OTHER_NAM, family="Gagnon", control_id="s11", when="202601010800"),
        adt("A34", site="HLA", mrn="HLA3", mrg="HLA2", control_id="s12", when="202601060800"),
        adt("A04", site="HLA", mrn="HLA4", nam=OTHER_NAM, control_id="s13", when="202601070800"),
        adt("A04", site="HSA", mrn="HSA5", visit="V7", control_id="s14", when="202601010800"),
        adt("A11", site="HSA", mrn="HSA5", visit="V7", location="", control_id="s15", when="202601010900"),
        adt("A04", site="HSA", mrn="HSA6", control_id="s16", when="202601010800"),
        adt("A11", site="HSA", mrn="HSA6", control_id="s17", when="202601010830"),
        adt("A04", site="HLA", mrn="HLA8", visit="V8", control_id="s18", when="202601010800"),
        adt("A03", site="HLA", mrn="HLA8", visit="V8", disposition="01", control_id="s19", when="202601020800"),
        adt("A13", site="HLA", mrn="HLA8", visit="V8", disposition="01", control_id="s20", when="202601020900"),
        adt("A02", site="HLA", mrn="HLA8", visit="V8", location="CHIR^204^2", prior="URG^CIV01^1",
            control_id="s21", when="202601030800"),
        adt("A12", site="HLA", mrn="HLA8", visit="V8", location="", control_id="s22", when="202601030900"),
        adt("A04", site="HSJ", mrn="HSJ7", nam=OTHER_NAM, control_id="s23", when="202601010800"),  # NAM conflict
        adt("A04", site="HSA", mrn="HSA1", extra_pid3="HLA8^^^HLA^MR", control_id="s24", when="202601080800"),
    ]


def _items(corpus: Path) -> list[Item]:
    """The feed, mapped afresh for each run (a resolution must not lean on its input's identity)."""
    items: list[Item] = [partial(mapped, raw) for raw in feed(300)]
    for _name, raw in corpus_messages(corpus):
        msg = supported(raw)
        if msg is None or not msg.trigger.startswith("A"):
            continue
        try:
            map_one(msg)
        except GatewayError:
            continue
        items.append(partial(map_one, msg))
    items += [partial(mapped, raw) for raw in _scenarios()]
    items += [  # the same person, one element at a time, with deletions and kin sets (survivorship tests)
        lambda: pid_adt("A04", "202601010800", pid={11: "1 rue A^^Laval^QC^H7A1A1", 13: "^PRN^PH^^^450^5551234"},
                        nk1=("Roy^Marie", "Roy^Luc"), pv1={}),
        lambda: pid_adt("A08", "202601020800", pid={11: '""'}, nk1=("Roy^Marie",), pv1={}),
        lambda: pid_adt("A08", "202601010900", pid={13: '""'}, site="HLA", nam=True),
    ]
    return items


def _outcome(resolver: IdentityResolver, item: Item) -> str:
    try:
        out = resolver.resolve(item())
    except MapError as exc:
        return f"MapError {exc.hl7_code} {exc.location} {exc}"
    return json.dumps([out.resources, out.nulls, out.patient_id, out.resolved], sort_keys=True, ensure_ascii=False)


def _rows(resolver: IdentityResolver) -> dict[str, list[list[Any]]]:
    return {t: sorted([str(v) for v in row] for row in resolver.index.db.run(f"SELECT * FROM {t}"))
            for t in _TABLES}


def _run(items: list[Item], *, fast: bool, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(mappings.merge, "DIRECT_NEW", fast)
    monkeypatch.setattr(resolve, "SKIP_UNSEEN", fast)
    monkeypatch.setattr(survivorship_messages, "_counter", [1000])  # the same control ids in both runs
    resolver = IdentityResolver(None)
    try:
        for item in items:
            yield _outcome(resolver, item)
        for item in items[-40:]:  # resends: resolved again, after everything else
            yield "again " + _outcome(resolver, item)
        yield json.dumps(_rows(resolver), sort_keys=True, ensure_ascii=False)
    finally:
        resolver.close()


def test_shortcuts_change_no_result_and_no_index_row(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items = _items(corpus)
    assert len(items) > 350
    slow = list(_run(items, fast=False, monkeypatch=monkeypatch))
    fast = list(_run(items, fast=True, monkeypatch=monkeypatch))
    assert sum(s.startswith("MapError") for s in slow) >= 1  # the refusals are in the feed
    assert sum('"active": false' in s for s in slow) >= 3  # and the links and merges
    for n, (a, b) in enumerate(zip(slow, fast, strict=True)):
        assert a == b, f"item {n} differs"


def test_a_first_resolution_reads_no_journal_and_a_resend_does() -> None:
    resolver = IdentityResolver(None)
    try:
        seen = _statements(resolver)
        raw = adt("A04", site="HLA", mrn="HLA7", nam=NAM, visit="V2", control_id="j1", when="202601020800")
        first = resolver.resolve(mapped(raw))
        assert not [s for s in seen if "FROM journal" in s]
        assert len(seen) <= 9, seen  # 10 in 0.7.0 (the journal read)
        seen.clear()
        again = resolver.resolve(mapped(raw))
        assert [s for s in seen if "FROM journal" in s]  # a resend reads what links and merges re-published
        assert first.resources == again.resources
    finally:
        resolver.close()
