"""Resolution order on the shared FHIR server: an older copy never overwrites a newer one.

A resource travels in bundles of several keys (a shared Practitioner in every patient's bundle),
delivered in any order by any instance. Each copy is tagged with its resolution rank (the
envelope's ``resolved``, ``meta.tag`` system ``urn:pivot:resolution``) and the pre-read drops an
entry whose server copy carries a higher rank. Through DeliverySink and the real sekmet server;
the rank comparison itself is unit-tested on delta.prune.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.delivery import client_from_settings, message_bundle
from gateway.delivery.bundle import iter_references
from gateway.delivery.delta import RANK_SYSTEM, prune, rank_of, stamp, with_rank
from gateway.settings import load_settings
from tests.fhir_server_fixtures import SekmetServer, sample_resources
from tests.test_delivery_bundle import _as_stored, _reply_for
from tests.test_delivery_sekmet import SENDER, Pipeline, _bundle

LICENCE = "https://fhir.infoway-inforoute.ca/NamingSystem/ca-qc-license-physician"
FAMILY = "Lefebvre"


@pytest.fixture(scope="module", name="server")
def server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SekmetServer]:
    """One sekmet for the module (its start costs seconds): each test has its own Practitioner and
    messages (no two tests share a Location either)."""
    server = SekmetServer(tmp_path_factory.mktemp("order")).start()
    yield server
    server.kill()


@pytest.fixture(name="pipe")
def pipe_fixture(tmp_path: Path, server: SekmetServer) -> Iterator[Pipeline]:
    pipe = Pipeline(tmp_path, server)
    pipe.sink.start()
    yield pipe
    pipe.close()


def _message(i: int, lic: str, family: str = FAMILY) -> list[dict[str, Any]]:
    """Message ``i``'s resources, its Practitioner the one of licence ``lic``, named ``family``."""
    resources = sample_resources(i)
    text = json.dumps(resources).replace(resources[1]["id"], f"prac-{lic}")
    resources = json.loads(text)
    resources[1]["identifier"] = [{"system": LICENCE, "value": lic}]
    resources[1]["name"] = [{"family": family, "given": ["Marie"], "prefix": ["Dre"]}]
    return resources


def _deliver(pipe: Pipeline, i: int, rank: int, resources: list[dict[str, Any]]) -> None:
    pipe.append([_bundle(i, resources)], resolved=rank)
    pipe.drain()


def _ranks(resource: dict[str, Any]) -> list[str]:
    return [t["code"] for t in (resource.get("meta") or {}).get("tag") or [] if t.get("system") == RANK_SYSTEM]


def _practitioner(srv: SekmetServer, lic: str) -> tuple[str, list[str], int]:
    """(family name, rank tags, number of versions) of the Practitioner of licence ``lic``."""
    prac = srv.get(f"Practitioner/prac-{lic}")
    versions = int(srv.get(f"Practitioner/prac-{lic}/_history", _count="1")["total"])
    return prac["name"][0]["family"], _ranks(prac), versions


def test_an_older_copy_delivered_last_keeps_the_newer(pipe: Pipeline, server: SekmetServer) -> None:
    _deliver(pipe, 1, 20, _message(1, "9001", "Nouveau"))
    _deliver(pipe, 2, 10, _message(2, "9001", "Ancien"))  # another patient's message, resolved earlier,
    assert _practitioner(server, "9001") == ("Nouveau", ["20"], 1)  # delivered later
    enc = server.get(f"Encounter/{sample_resources(2)[3]['id']}")  # the rest of the older message is delivered
    assert enc["participant"][0]["individual"]["reference"] == "Practitioner/prac-9001"
    assert _ranks(enc) == ["10"]
    assert 'pivot_delivered_resources_total{result="stale"} 1' in pipe.metrics.render()
    assert pipe.dead() == []


def test_the_newer_copy_delivered_last_stays_when_the_older_comes_again(
        pipe: Pipeline, server: SekmetServer) -> None:
    _deliver(pipe, 4, 10, _message(4, "9002", "Ancien"))
    _deliver(pipe, 3, 20, _message(3, "9002", "Nouveau"))
    assert _practitioner(server, "9002") == ("Nouveau", ["20"], 2)
    _deliver(pipe, 4, 10, _message(4, "9002", "Ancien"))  # the older message delivered again (restart, replay)
    assert _practitioner(server, "9002") == ("Nouveau", ["20"], 2)
    assert pipe.dead() == []


def test_equal_content_under_another_rank_writes_no_version(pipe: Pipeline, server: SekmetServer) -> None:
    _deliver(pipe, 5, 10, _message(5, "9003"))
    _deliver(pipe, 6, 20, _message(6, "9003"))  # the same Practitioner from a later resolution: not
    assert _practitioner(server, "9003") == (FAMILY, ["10"], 1)  # rewritten for its rank alone
    _deliver(pipe, 7, 5, _message(7, "9003", "Ancien"))  # older than what the server holds
    assert _practitioner(server, "9003") == (FAMILY, ["10"], 1)


def test_a_copy_without_a_rank_is_overwritten(pipe: Pipeline, server: SekmetServer) -> None:
    legacy = {**_message(8, "9004", "Autre")[1], "meta": {}}  # written by someone else, without a rank
    httpx.put(f"{server.base_url}/Practitioner/prac-9004", json=legacy, timeout=10).raise_for_status()
    _deliver(pipe, 8, 10, _message(8, "9004"))
    assert _practitioner(server, "9004") == (FAMILY, ["10"], 2)
    _deliver(pipe, 9, 0, _message(9, "9004", "Sans rang"))  # an unranked record (published before ranks):
    assert _practitioner(server, "9004") == ("Sans rang", ["10"], 3)  # written, keeping the server's rank
    _deliver(pipe, 10, 5, _message(10, "9004", "Ancien"))
    assert _practitioner(server, "9004") == ("Sans rang", ["10"], 3)
    assert pipe.dead() == []


def test_a_refused_bundle_keeps_its_ranks_in_the_dead_letter(pipe: Pipeline) -> None:
    bad = _message(14, "9006")
    bad[0]["birthDate"] = "1999-13-45"
    _deliver(pipe, 14, 30, bad)
    (dead,) = pipe.dead()
    assert dead.headers["reason"].startswith("HTTP 400")
    entries = json.loads(dead.value)["entry"]  # replayed with a fresh envelope (no "resolved"): still ranked
    assert [_ranks(e["resource"]) for e in entries] == [["30"]] * 6


def test_a_newer_copy_written_after_the_pre_read_is_not_overwritten(
        tmp_path: Path, server: SekmetServer, monkeypatch: pytest.MonkeyPatch) -> None:
    client = client_from_settings(load_settings(data_dir=tmp_path, fhir_base_url=server.base_url))
    first = message_bundle(_message(11, "9005"), sender=SENDER, control_id="C11")
    stamp(first, 5)
    client.deliver(first)
    older = message_bundle(_message(12, "9005", "Ancien"), sender=SENDER, control_id="C12")
    stamp(older, 10)
    newer = _message(13, "9005", "Nouveau")[1]
    with_rank(newer, 20)
    post = client._post

    def racing(bundle: dict[str, Any], prefer: str = "") -> dict[str, Any]:
        if bundle["type"] == "transaction" and not raced:  # another instance writes between read and write
            raced.append(True)
            httpx.put(f"{server.base_url}/Practitioner/prac-9005", json=newer, timeout=10).raise_for_status()
        return post(bundle, prefer)

    raced: list[bool] = []
    monkeypatch.setattr(client, "_post", racing)
    result = client.deliver(older)  # 412 (If-Match on the version read), re-planned: now stale
    assert (result.attempts, result.stale, result.created) == (2, 1, 5)
    assert _practitioner(server, "9005") == ("Nouveau", ["20"], 2)
    client.close()


# -- delta.py: the rank comparison ------------------------------------------------------------------------
def _ranked(resource: dict[str, Any], rank: int) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    if rank:
        with_rank(out, rank)
    return out


def _plan(ours: int, theirs: int, *, server_family: str | None = None) -> Any:
    """prune of message 7 tagged ``ours`` against a server holding the same resources tagged ``theirs``
    (its Practitioner named ``server_family`` when given)."""
    resources = sample_resources(7)
    bundle = message_bundle(resources, sender=SENDER, control_id="C7")
    stamp(bundle, ours)
    stored = [_ranked(_as_stored(r), theirs) for r in resources]
    if server_family:
        stored[1]["name"] = [{"family": server_family}]
    return prune(bundle, _reply_for(bundle, stored))


def _practitioner_entry(plan: Any) -> dict[str, Any] | None:
    entries = plan.bundle["entry"] if plan.bundle else []
    return next((e["resource"] for e in entries if e["resource"]["resourceType"] == "Practitioner"), None)


def test_rank_of_reads_the_highest_rank_tag_and_ignores_junk() -> None:
    assert rank_of({"resourceType": "Practitioner"}) == 0
    assert rank_of({"meta": {"tag": [{"system": "other", "code": "9"}]}}) == 0
    tags = [{"system": RANK_SYSTEM, "code": c} for c in ("3", "15", "x", "-1", "١٢", "9" * 19)]
    assert rank_of({"meta": {"tag": tags}}) == 15  # a server keeping every tag (HAPI adds them up)
    assert rank_of({"meta": "junk"}) == 0


def test_stamp_tags_every_entry_and_leaves_the_rest_alone() -> None:
    shared_meta = {"source": "s#1", "tag": [{"system": "other", "code": "a"}, {"system": RANK_SYSTEM, "code": "2"}]}
    bundle = {"entry": [{"resource": {"resourceType": "Patient", "id": "p", "meta": shared_meta}},
                        {"resource": {"resourceType": "Flag", "id": "f"}}]}
    before = copy.deepcopy(bundle)
    stamp(bundle, 0)
    assert bundle == before  # unranked: a replayed dead letter keeps the tags it carries
    stamp(bundle, 7)
    patient, flag = (e["resource"] for e in bundle["entry"])
    assert patient["meta"] == {"source": "s#1", "tag": [{"system": "other", "code": "a"},
                                                        {"system": RANK_SYSTEM, "code": "7"}]}
    assert flag["meta"] == {"tag": [{"system": RANK_SYSTEM, "code": "7"}]}
    assert shared_meta["tag"][1]["code"] == "2"  # the input's meta is not changed in place


def test_prune_drops_what_a_later_resolution_wrote() -> None:
    stale = _plan(5, 10, server_family="Nouveau")  # the server holds later copies of everything
    assert (stale.bundle, stale.unchanged, stale.stale) == (None, 0, 6)
    resources = sample_resources(7)
    bundle = message_bundle(resources, sender=SENDER, control_id="C7")
    stamp(bundle, 5)
    stored = [_ranked(_as_stored(r), 3) for r in resources]
    stored[1] = {**_ranked(stored[1], 10), "id": "legacy-prac", "name": [{"family": "Nouveau"}]}
    for res in stored:  # the server holds that Practitioner under its own id
        for ref in iter_references(res):
            ref["reference"] = ref["reference"].replace(resources[1]["id"], "legacy-prac")
    stored[0]["gender"] = "male"  # this message's Patient changed: written, pointing at the server's id
    plan = prune(bundle, _reply_for(bundle, stored))
    assert plan.bundle is not None
    assert (plan.unchanged, plan.stale) == (4, 1)
    (entry,) = plan.bundle["entry"]
    assert entry["resource"]["generalPractitioner"][0]["reference"] == "Practitioner/legacy-prac"
    assert rank_of(entry["resource"]) == 5


def test_prune_writes_a_newer_or_equal_rank_or_unranked_copy_that_differs() -> None:
    for ours, theirs in ((10, 5), (10, 10), (10, 0), (0, 0)):
        plan = _plan(ours, theirs, server_family="Autre")
        prac = _practitioner_entry(plan)
        assert prac is not None, (ours, theirs)
        assert rank_of(prac) == ours
        assert (plan.unchanged, plan.stale) == (5, 0)
    carried = _practitioner_entry(_plan(0, 10, server_family="Autre"))  # unranked over ranked: written,
    assert carried is not None
    assert rank_of(carried) == 10  # keeping the server's rank (as the embedded store does)


def test_prune_ignores_the_rank_tag_when_comparing() -> None:
    for ours, theirs in ((20, 10), (10, 10), (0, 10), (10, 0)):
        plan = _plan(ours, theirs)
        assert (plan.bundle, plan.unchanged, plan.stale) == (None, 6, 0), (ours, theirs)
