"""Issue #3 item 4: one person across sites, asserted by FHIR searches on the final state.

The same feed runs through an in-process gateway (embedded log, intake, mapping worker, identity
resolver) into (a) our embedded FHIR store and (b) the real sekmet-fhir server (DeliverySink, one
transaction Bundle per message):

- X registers at HSA and HLA with different MRNs and the same NAM; at HSJ without the NAM, then an
  A08 adds it; an A11 cancels the HLA visit;
- Y has two MRNs at HSA, merged by an A40;
- Z is at HSA and HLA without a NAM, same name, birth date and sex: a possible duplicate, never
  merged.

Expected: one active Patient per person carrying every identifier, Encounters under the survivor,
the cancelled visit cancelled, retired records inactive and linked; and after the whole feed is
replayed twice (dedupe forgotten, same control ids) the same state with no new versions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from connectors.base import Origin
from gateway.app import Gateway
from gateway.drain import wait_drained
from gateway.identity.bodies import DUPLICATE_SYSTEM
from gateway.identity.keys import nam_person_id
from gateway.settings import load_settings
from gateway.topics import FHIR_TYPES
from mappings import stable_id
from tests.fhir_server_fixtures import SekmetServer
from tests.test_identity_messages import NAM_SYSTEM, SITES, adt, mrn_system

JSON = dict[str, Any]
NAM_X = "TREJ40010112"
X, Z = {"family": "Tremblay", "given": "Jérôme", "birth": "19400101", "sex": "M"}, {
    "family": "Côté", "given": "Élise", "birth": "19500505", "sex": "F"}
Y = {"family": "Morin", "given": "Amélie", "birth": "19570523", "sex": "F"}
PERSON_TYPES = ("Patient", "Encounter", "Condition", "RelatedPerson", "Provenance")

FEED: list[bytes] = [
    adt("A04", site="HSA", mrn="HSA1001", nam=NAM_X, visit="VHSA1", control_id="S01", when="202601010800", **X),
    adt("A04", site="HLA", mrn="HLA2001", nam=NAM_X, visit="VHLA1", control_id="S02", when="202601020900", **X),
    adt("A04", site="HSJ", mrn="HSJ3001", visit="VHSJ1", control_id="S03", when="202601031000", **X),
    adt("A08", site="HSJ", mrn="HSJ3001", nam=NAM_X, visit="VHSJ1", control_id="S04", when="202601031100", **X),
    adt("A11", site="HLA", mrn="HLA2001", visit="VHLA1", control_id="S05", when="202601041200", **X),
    adt("A04", site="HSA", mrn="HSA1002", visit="VHSA2", control_id="S06", when="202601050800", **Y),
    adt("A04", site="HSA", mrn="HSA1003", visit="VHSA3", control_id="S07", when="202601060800", **Y),
    adt("A40", site="HSA", mrn="HSA1002", mrg="HSA1003", control_id="S08", when="202601070800", **Y),
    adt("A04", site="HSA", mrn="HSA1004", visit="VHSA4", control_id="S09", when="202601080800", **Z),
    adt("A04", site="HLA", mrn="HLA2004", visit="VHLA4", control_id="S10", when="202601090800", **Z),
]


class Server(Protocol):
    """What the assertions need from a FHIR server: search and version counts."""

    def search(self, rtype: str, **params: str) -> list[JSON]: ...

    def versions(self, rtype: str) -> int: ...


class EmbeddedServer:
    def __init__(self, gateway: Gateway) -> None:
        self.store = gateway.store

    def search(self, rtype: str, **params: str) -> list[JSON]:
        _query, page = self.store.search(rtype, [*params.items(), ("_count", "1000")])
        return [e.resource for e in page.entries if e.resource is not None]

    def versions(self, rtype: str) -> int:
        with self.store.reading() as conn:
            return int(conn.execute("SELECT count(*) FROM versions WHERE rtype = ?", (rtype,)).fetchone()[0])


class ExternalServer:
    def __init__(self, server: SekmetServer) -> None:
        self.server = server

    def search(self, rtype: str, **params: str) -> list[JSON]:
        bundle = self.server.get(rtype, _count="1000", **params)
        return [e["resource"] for e in bundle.get("entry") or [] if e.get("search", {}).get("mode", "match") == "match"]

    def versions(self, rtype: str) -> int:
        return self.server.history_total(rtype)


@pytest.fixture(params=["embedded", "sekmet"])
def setup(request: pytest.FixtureRequest, tmp_path: Path,
          sekmet_factory: Callable[..., SekmetServer]) -> Iterator[tuple[Gateway, Server]]:
    if request.param == "sekmet":
        external = sekmet_factory()
        gateway = Gateway(load_settings(data_dir=tmp_path / "var", fhir_base_url=external.base_url,
                                        fhir_retry_max_s=1.0))
        server: Server = ExternalServer(external)
    else:
        gateway = Gateway(load_settings(data_dir=tmp_path / "var"))
        server = EmbeddedServer(gateway)
    gateway.start_workers()
    yield gateway, server
    gateway.close()


def _feed(gateway: Gateway, *, replay: bool) -> None:
    origin = Origin("test", "identity-scenario")
    for raw in FEED:
        if replay:
            fields = raw.split(b"\r")[0].decode().split("|")
            gateway.dedupe.forget(f"{fields[2]}|{fields[3]}", fields[9])
        reply = gateway.intake.receive(raw, origin)
        assert reply.code == "AA", reply.error
        assert not reply.duplicate
    assert wait_drained(gateway, timeout_s=60)
    assert gateway.log.read_all(gateway.settings.topic("deadletter")) == []


def _mrn(site: str, mrn: str) -> str:
    return f"{mrn_system(site)}|{mrn}"


def _one_active(server: Server, identifier: str) -> JSON:
    found = server.search("Patient", identifier=identifier, active="true")
    assert len(found) == 1, (identifier, [p["id"] for p in found])
    return found[0]


def _identifiers(patient: JSON) -> set[str]:
    return {f"{i['system']}|{i['value']}" for i in patient["identifier"]}


def _assert_final_state(server: Server, *, flags: bool) -> None:
    # X: one active Patient with the NAM and the three site MRNs, found by each of them
    x = _one_active(server, f"{NAM_SYSTEM}|{NAM_X}")
    assert x["id"] == nam_person_id(NAM_X)
    assert _identifiers(x) >= {f"{NAM_SYSTEM}|{NAM_X}", _mrn("HSA", "HSA1001"), _mrn("HLA", "HLA2001"),
                               _mrn("HSJ", "HSJ3001")}
    for site, mrn in (("HSA", "HSA1001"), ("HLA", "HLA2001"), ("HSJ", "HSJ3001")):
        assert _one_active(server, _mrn(site, mrn))["id"] == x["id"]
    hsj_record = stable_id("Patient", _mrn("HSJ", "HSJ3001"))
    [retired] = [p for p in server.search("Patient", identifier=_mrn("HSJ", "HSJ3001")) if p["id"] != x["id"]]
    assert retired["id"] == hsj_record
    assert retired["active"] is False
    assert [link["type"] for link in retired["link"]] == ["replaced-by"]
    # X's Encounters are all under X, the HSJ visit included; the HLA visit is cancelled
    visits = {e["identifier"][0]["value"]: e for e in server.search("Encounter", patient=x["id"])}
    assert set(visits) == {"VHSA1", "VHLA1", "VHSJ1"}
    assert visits["VHLA1"]["status"] == "cancelled"
    assert visits["VHSA1"]["status"] == visits["VHSJ1"]["status"] == "in-progress"
    assert server.search("Encounter", patient=hsj_record) == []
    # Y: the A40 survivor carries both MRNs and both visits; the merged record is inactive
    y = _one_active(server, _mrn("HSA", "HSA1003"))
    assert y["id"] == stable_id("Patient", _mrn("HSA", "HSA1002"))
    assert _identifiers(y) == {_mrn("HSA", "HSA1002"), _mrn("HSA", "HSA1003")}
    assert {e["identifier"][0]["value"] for e in server.search("Encounter", patient=y["id"])} == {"VHSA2", "VHSA3"}
    merged = stable_id("Patient", _mrn("HSA", "HSA1003"))
    assert server.search("Patient", _id=merged)[0]["active"] is False
    assert server.search("Encounter", patient=merged) == []
    # Z: two people as far as we know (no NAM): never merged
    assert _one_active(server, _mrn("HSA", "HSA1004"))["id"] != _one_active(server, _mrn("HLA", "HLA2004"))["id"]
    assert len(server.search("Patient", active="true")) == 4  # X, Y, and Z twice
    if flags:
        pairs = server.search("Flag", identifier=f"{DUPLICATE_SYSTEM}|")
        # one Flag per record: Z's two records each name the other; the ones a link or merge resolved closed
        open_flags = [f for f in pairs if f["status"] == "active"]
        assert len(open_flags) == 2
        assert {f["status"] for f in pairs} == {"active", "inactive"}
        z_ids = {_one_active(server, _mrn("HSA", "HSA1004"))["id"], _one_active(server, _mrn("HLA", "HLA2004"))["id"]}
        named = {(f["subject"]["reference"].split("/")[1],
                  f["extension"][0]["valueReference"]["reference"].split("/")[1]) for f in open_flags}
        assert named == {tuple(z_ids), tuple(reversed(tuple(z_ids)))}


def test_one_person_across_sites(setup: tuple[Gateway, Server]) -> None:
    gateway, server = setup
    assert set(SITES) == {"HSA", "HLA", "HSJ"}
    _feed(gateway, replay=False)
    external = isinstance(server, ExternalServer)
    # possible duplicates reach the store once Flag is one of gateway.topics.FHIR_TYPES (delivery: always)
    flags = external or "Flag" in FHIR_TYPES
    _assert_final_state(server, flags=flags)
    listed = gateway.identity.duplicates()
    assert len(listed) == 2  # Z's two records, one Flag each
    assert listed[0].sites_a != listed[0].sites_b
    types = PERSON_TYPES + (("Flag",) if flags else ())
    if external:  # the delivery skips unchanged content of every type
        types += ("Organization", "Practitioner", "Location")
    before = {t: server.versions(t) for t in types}
    for _ in range(2):
        _feed(gateway, replay=True)
    _assert_final_state(server, flags=flags)
    assert {t: server.versions(t) for t in types} == before
