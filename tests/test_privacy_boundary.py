"""The privacy boundary holds on every route (issue #13): an organisation's client learns nothing
about a client outside its care teams, whatever route it calls.

One gateway (PIVOT_AUTH=tokens, the app of ``pivot serve``) fed a simulated year through the
intake; the program's staff enroll two candidates (one inside clinic A's care teams, one outside);
clinic A is in the CareTeams of two clients (one enrolled, one candidate); both enrolled clients
arrive at the ER (alerts). Then:

- **the route walk**: every route of the app's route table (FastAPI's, the FHIR operations, the
  console's API) is called by clinic A's client with broad scopes, with path parameters set to
  ids of clients inside and outside its care teams; no answer (JSON, CSV, the SSE stream) may
  contain an outside client's id, NAM or family name, and none may be a 5xx. A route the table
  below does not know fails the test: add a rule to ``ROUTES``.
- one test per finding of the issue (1, 2, 3, 4, 8) that failed on the code before the boundary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from connectors.base import Origin
from gateway.app import Gateway, create_app
from gateway.defisante.arrival import ZONE, visit_message
from gateway.defisante.register import nam_of
from gateway.drain import wait_drained
from gateway.fhirstore.careteam import clients_of
from gateway.samples import er_message
from gateway.security.audit_trail import query_audit
from gateway.settings import load_settings
from gateway.simulate import simulate
from tests.security_helpers import tokens_file
from tests.test_console_support import enroll_body

JSON = dict[str, Any]
BROAD = ["system/*.cruds", "system/defi-sante.rs", "system/defi-sante.c", "system/metrics.r", "system/hl7v2.c",
         "system/AuditEvent.rs"]
CLINIC, PROGRAM, ENCOUNTERS, PATIENTS = ("tok-clinic-a-0123456789", "tok-program-0123456789",
                                         "tok-encounters-0123456789", "tok-patients-0123456789")
ORG = "clinic-a"
OWNER = "https://pivot.example.org/fhir/StructureDefinition/subscription-owner"
WIDE = "https://pivot.example.org/fhir/StructureDefinition/subscription-program-wide"
TOPIC = "https://pivot.example.org/fhir/SubscriptionTopic/er-arrival"


@dataclass
class World:
    gw: Gateway
    http: TestClient
    inside: list[str] = field(default_factory=list)  # person ids: [enrolled, candidate]
    outside: list[str] = field(default_factory=list)
    markers: set[str] = field(default_factory=set)  # outside clients' Patient ids, NAMs, family names
    outside_resources: list[tuple[str, str]] = field(default_factory=list)  # (type, id) about outside clients
    inside_resources: list[tuple[str, str]] = field(default_factory=list)
    alerts: dict[str, str] = field(default_factory=dict)  # Communication id → person
    subscriptions: dict[str, str] = field(default_factory=dict)  # "inside"/"outside" → Subscription id

    def get(self, path: str, token: str = CLINIC, **kw: Any) -> Any:
        return self.http.get(path, headers={"Authorization": f"Bearer {token}"}, **kw)

    def call(self, method: str, path: str, token: str = CLINIC, **kw: Any) -> Any:
        return self.http.request(method, path, headers={"Authorization": f"Bearer {token}",
                                                        **kw.pop("headers", {})}, **kw)

    def leaks(self, text: str) -> list[str]:
        text = _without_links(text)
        return sorted(m for m in self.markers if m in text)


def _unlinked(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _unlinked(v) for k, v in node.items() if k != "link" or not isinstance(v, list)}
    return [_unlinked(v) for v in node] if isinstance(node, list) else node


def _without_links(text: str) -> str:
    """A JSON answer without its Bundle links (they echo the caller's own query, e.g. ``patient=<id>``)."""
    try:
        return json.dumps(_unlinked(json.loads(text)), ensure_ascii=False)
    except ValueError:
        return text


def _send(gw: Gateway, raw: bytes) -> None:
    reply = gw.intake.receive(raw, Origin("test", "boundary"))
    assert reply.code == "AA", reply.error


def _patients_of(gw: Gateway, person: str) -> list[JSON]:
    known = gw.defisante.register().persons.get(person)
    ids = sorted(known.patient_ids) if known is not None else [person]
    return [gw.store.read("Patient", pid).resource or {} for pid in ids]


def _family(patient: JSON) -> str:
    names = [n for n in patient.get("name") or [] if isinstance(n, dict)]
    return str(names[0].get("family") or "") if names else ""


def _all(gw: Gateway, rtype: str) -> list[JSON]:
    _q, page = gw.store.search(rtype, [("_count", "1000")])
    return [e.resource for e in page.entries if e.resource is not None]


def _markers(gw: Gateway, outside: list[str]) -> set[str]:
    """Ids, NAMs and family names of the outside clients (a family name also borne by someone else is
    left out: it would not tell whose it is)."""
    mine = {str(p["id"]) for person in outside for p in _patients_of(gw, person)}
    others = {_family(p) for p in _all(gw, "Patient") if str(p["id"]) not in mine}
    out: set[str] = set()
    for person in outside:
        for patient in _patients_of(gw, person):
            out.add(str(patient["id"]))
            out |= {v for v in (nam_of(patient), _family(patient)) if v and v not in others}
    return out


def _about(gw: Gateway, persons: list[str]) -> list[tuple[str, str]]:
    ids = {str(p["id"]) for person in persons for p in _patients_of(gw, person)}
    found: list[tuple[str, str]] = []
    for rtype in sorted(gw.store.counts()):
        for res in _all(gw, rtype):
            if clients_of(res) & ids:
                found.append((rtype, str(res["id"])))
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("boundary")
    tokens = tokens_file(root / "tokens.json", {
        CLINIC: {"client_id": "ehr-clinic-a", "scopes": BROAD, "organization": ORG},
        PROGRAM: {"client_id": "case-program", "scopes": BROAD},
        ENCOUNTERS: {"client_id": "encounters-only", "scopes": ["system/Encounter.rs"]},
        PATIENTS: {"client_id": "patients-only", "scopes": ["system/Patient.rs"]},
    })
    gw = Gateway(load_settings(data_dir=root / "var", auth="tokens", auth_tokens_file=tokens,
                               subscription_allow_private=True))
    gw.start_workers()
    http = TestClient(create_app(gw, console_options={"stream_max_s": 1.5, "stream_poll_s": 0.2}),
                      raise_server_exceptions=False)
    w = World(gw, http)
    start = datetime.now(ZONE).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=365)
    sim = simulate(sites=3, people=60, days=365, seed=13, frequent=0.15, start=start.replace(tzinfo=None))
    for _when, raw in sim.messages:
        _send(gw, raw)
    assert wait_drained(gw, timeout_s=60)
    found = w.get("/fhir/Patient/$defi-sante-candidates", PROGRAM).json()["entry"]
    persons = [str(e["resource"]["id"]) for e in found]
    assert len(persons) >= 4, "the simulated year must give at least four candidates"
    w.inside, w.outside = [persons[0], persons[2]], [persons[1], persons[3]]
    for person in (w.inside[0], w.outside[0]):
        when = (start + timedelta(days=200, hours=9)).isoformat()
        resp = w.call("POST", f"/fhir/Patient/{person}/$defi-sante-enroll", PROGRAM, json=enroll_body(start=when))
        assert resp.status_code in (200, 201), resp.text
    gw.store.upsert_many([{"resourceType": "Organization", "id": ORG, "name": "GMF A"}] + [
        {"resourceType": "CareTeam", "id": f"gmf-a-{person}", "status": "active",
         "subject": {"reference": f"Patient/{person}"},
         "participant": [{"member": {"reference": f"Organization/{ORG}"}}]} for person in w.inside])
    for person in (w.inside[0], w.outside[0]):
        _send(gw, visit_message(gw.store.read("Patient", person).resource or {}, site="HSA", when=datetime.now(ZONE)))
    assert wait_drained(gw, timeout_s=60)
    _subscriptions(w)
    w.markers = _markers(gw, w.outside)
    w.outside_resources = _about(gw, w.outside)
    w.inside_resources = _about(gw, w.inside)
    w.alerts = {rid: "" for rtype, rid in w.outside_resources + w.inside_resources if rtype == "Communication"}
    assert w.markers
    assert w.outside_resources
    yield w
    http.close()
    gw.close()


def _subscription(owner: str | None = None, wide: bool | None = None) -> JSON:
    sub: JSON = {"resourceType": "Subscription", "status": "requested", "reason": "test", "criteria": TOPIC,
                 "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook",
                             "payload": "application/fhir+json"}}
    ext: list[JSON] = []
    if owner:
        ext.append({"url": OWNER, "valueReference": {"reference": f"Organization/{owner}"}})
    if wide is not None:
        ext.append({"url": WIDE, "valueBoolean": wide})
    return {**sub, "extension": ext} if ext else sub


def _subscriptions(w: World) -> None:
    mine = w.call("POST", "/fhir/Subscription", json=_subscription())
    assert mine.status_code == 201, mine.text
    w.subscriptions["inside"] = mine.json()["id"]
    theirs = {**_subscription(owner="clinic-b"), "id": "sub-clinic-b"}
    w.gw.store.upsert_many([theirs])  # another organisation's, written by hospital IT's tooling
    w.subscriptions["outside"] = "sub-clinic-b"


# -- the route walk -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool = False


Rule = Callable[[World], list[Call]]


def _pids(w: World) -> list[str]:
    return [*w.inside, *w.outside]


def _types(w: World) -> list[str]:
    return sorted(w.gw.store.counts())


def _resources(w: World) -> list[tuple[str, str]]:
    return w.outside_resources + w.inside_resources[:20]


def _bundle(w: World) -> JSON:
    outsider = w.outside[0]
    return {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": "CareTeam"},
         "resource": {"resourceType": "CareTeam", "status": "active", "subject": {"reference": f"Patient/{outsider}"},
                      "participant": [{"member": {"reference": f"Organization/{ORG}"}}]}},
        *({"request": {"method": "PUT", "url": f"{t}/{i}"}, "resource": w.gw.store.read(t, i).resource}
          for t, i in w.outside_resources[:10])]}


def _fhir_generic(method: str, path: str) -> Rule:
    """The FHIR store's own routes: every stored type, every resource about a client."""
    def calls(w: World) -> list[Call]:
        if path == "/fhir/{rtype}/{rid}":
            if method == "GET":
                return [Call("GET", f"/fhir/{t}/{i}") for t, i in _resources(w)]
            if method == "PUT":
                return [Call("PUT", f"/fhir/{t}/{i}", body=w.gw.store.read(t, i).resource) for t, i in _resources(w)]
            return [Call("DELETE", f"/fhir/{t}/{i}") for t, i in w.outside_resources]
        if path in ("/fhir/{rtype}/{rid}/_history", "/fhir/{rtype}/{rid}/_history/{vid}"):
            tail = "/_history" + ("/1" if path.endswith("{vid}") else "")
            return [Call("GET", f"/fhir/{t}/{i}{tail}") for t, i in _resources(w)]
        if path == "/fhir/{rtype}/_history":
            return [Call("GET", f"/fhir/{t}/_history", {"_count": "1000"}) for t in _types(w)]
        if path in ("/fhir/{rtype}", "/fhir/{rtype}/_search") and method == "GET":
            out = [Call("GET", f"/fhir/{t}", {"_count": "1000"}) for t in _types(w)]
            out += [Call("GET", path.replace("{rtype}", "Encounter"), {"_include": "Encounter:patient"}),
                    Call("GET", "/fhir/Patient", {"_revinclude": "Encounter:patient", "_count": "1000"}),
                    Call("GET", "/fhir/Patient", {"_summary": "count"})]
            out += [Call("GET", "/fhir/Encounter", {"patient": f"Patient/{p}"}) for p in w.outside]
            return out
        if path == "/fhir/{rtype}/_search":
            return [Call("POST", f"/fhir/{t}/_search", body=b"_count=1000",
                         headers={"content-type": "application/x-www-form-urlencoded"}) for t in _types(w)]
        if path == "/fhir/{rtype}" and method == "POST":
            return [Call("POST", "/fhir/CareTeam", body=_bundle(w)["entry"][0]["resource"]),
                    *(Call("POST", "/fhir/Patient", body={"resourceType": "Patient"},
                           headers={"If-None-Exist": f"_id={p}"}) for p in w.outside)]
        if path == "/fhir/{rtype}" and method == "PUT":
            return [Call("PUT", "/fhir/Patient", {"_id": p}, body={"resourceType": "Patient"}) for p in w.outside]
        if path in ("/fhir", "/fhir/"):
            return [Call("POST", path, body=_bundle(w)), Call("POST", path, body={**_bundle(w), "type": "transaction"})]
        raise AssertionError(f"no rule for {method} {path}")
    return calls


def _fallback(w: World) -> list[Call]:
    return [Call(m, f"/fhir/Patient/{w.outside[0]}/$everything") for m in ("GET", "POST", "PATCH")] + \
        [Call("GET", "/fhir/NotAType"), Call("OPTIONS", "/fhir")]


def _sub_ops(op: str) -> Rule:
    return lambda w: [Call(m, f"/fhir/Subscription/{sid}/{op}", {"content": "full-resource"})
                      for sid in w.subscriptions.values() for m in ("GET", "POST")]


def _per_patient(tail: str, method: str = "GET", body: Any = None) -> Rule:
    return lambda w: [Call(method, tail.format(pid=p), body=body) for p in _pids(w)]


def _conformance(rtype: str) -> Rule:
    return lambda w: [Call("GET", f"/fhir/{rtype}"), Call("GET", f"/fhir/{rtype}/defi-sante")]


ROUTES: dict[tuple[str, str], Rule] = {
    ("GET", "/openapi.json"): lambda w: [Call("GET", "/openapi.json")],
    ("GET", "/docs"): lambda w: [Call("GET", "/docs")],
    ("GET", "/docs/oauth2-redirect"): lambda w: [Call("GET", "/docs/oauth2-redirect")],
    ("GET", "/redoc"): lambda w: [Call("GET", "/redoc")],
    ("GET", "/healthz"): lambda w: [Call("GET", "/healthz")],
    ("GET", "/metrics"): lambda w: [Call("GET", "/metrics")],
    ("POST", "/hl7v2"): lambda w: [Call("POST", "/hl7v2", body=er_message(4242, control_id="BOUNDARY1"),
                                        headers={"content-type": "x-application/hl7-v2+er7"})],
    ("GET", "/fhir/Patient/$defi-sante-candidates"): lambda w: [
        Call("GET", "/fhir/Patient/$defi-sante-candidates"),
        Call("GET", "/fhir/Patient/$defi-sante-candidates", {"_format": "csv"}),
        Call("GET", "/fhir/Patient/$defi-sante-candidates", {"exclusion": "none", "threshold": "1"})],
    ("POST", "/fhir/Patient/{rid}/$defi-sante-enroll"): _per_patient(
        "/fhir/Patient/{pid}/$defi-sante-enroll", "POST", enroll_body()),
    ("POST", "/fhir/Patient/{rid}/$defi-sante-disenroll"): _per_patient(
        "/fhir/Patient/{pid}/$defi-sante-disenroll", "POST"),
    ("GET", "/fhir/Group/defi-sante"): lambda w: [Call("GET", "/fhir/Group/defi-sante")],
    ("GET", "/fhir/Group/defi-sante/$defi-sante-outcomes"): lambda w: [
        Call("GET", "/fhir/Group/defi-sante/$defi-sante-outcomes"),
        Call("GET", "/fhir/Group/defi-sante/$defi-sante-outcomes", {"_format": "csv"}),
        *(Call("GET", "/fhir/Group/defi-sante/$defi-sante-outcomes", {"patient": p}) for p in _pids(w))],
    ("GET", "/fhir/Group/$defi-sante-outcomes"): lambda w: [Call("GET", "/fhir/Group/$defi-sante-outcomes")],
    ("GET", "/fhir/Group/{gid}/$defi-sante-outcomes"): lambda w: [
        Call("GET", "/fhir/Group/other/$defi-sante-outcomes")],
    **{("GET", f"/fhir/{t}/{{rid}}"): _conformance(t) for t in ("CodeSystem", "StructureDefinition",
                                                              "OperationDefinition")},
    **{("GET", f"/fhir/{t}"): _conformance(t) for t in ("CodeSystem", "StructureDefinition", "OperationDefinition")},
    ("GET", "/fhir/Subscription/{sid}/$status"): _sub_ops("$status"),
    ("POST", "/fhir/Subscription/{sid}/$status"): _sub_ops("$status"),
    ("GET", "/fhir/Subscription/{sid}/$events"): _sub_ops("$events"),
    ("POST", "/fhir/Subscription/{sid}/$events"): _sub_ops("$events"),
    ("GET", "/fhir/metadata"): lambda w: [Call("GET", "/fhir/metadata")],
    **{(m, p): _fhir_generic(m, p) for m, p in [
        ("POST", "/fhir"), ("POST", "/fhir/"), ("GET", "/fhir/{rtype}/_history"), ("GET", "/fhir/{rtype}/_search"),
        ("GET", "/fhir/{rtype}"), ("POST", "/fhir/{rtype}/_search"), ("GET", "/fhir/{rtype}/{rid}/_history"),
        ("GET", "/fhir/{rtype}/{rid}/_history/{vid}"), ("GET", "/fhir/{rtype}/{rid}"), ("POST", "/fhir/{rtype}"),
        ("PUT", "/fhir/{rtype}/{rid}"), ("PUT", "/fhir/{rtype}"), ("DELETE", "/fhir/{rtype}/{rid}")]},
    **{(m, p): _fallback for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
       for p in ("/fhir", "/fhir/{rest:path}")},
    ("GET", "/fhir/AuditEvent"): lambda w: [Call("GET", "/fhir/AuditEvent"),
                                            *(Call("GET", "/fhir/AuditEvent", {"patient": p}) for p in w.outside)],
    ("GET", "/fhir/AuditEvent/{event_id}"): lambda w: [Call("GET", f"/fhir/AuditEvent/{e['id']}") for p in w.outside
                                                       for e in query_audit(w.gw.settings.data_dir / "audit.sqlite",
                                                                            patient=p)[:5]],
    ("GET", "/console"): lambda w: [Call("GET", "/console")],
    ("GET", "/console/"): lambda w: [Call("GET", "/console/")],
    ("GET", "/console/static/{name}"): lambda w: [Call("GET", "/console/static/app.js")],
    ("GET", "/console/api/roster"): lambda w: [Call("GET", "/console/api/roster")],
    ("GET", "/console/api/candidates"): lambda w: [Call("GET", "/console/api/candidates"),
                                                   Call("GET", "/console/api/candidates", {"threshold": "1"})],
    ("GET", "/console/api/clients/{pid}"): _per_patient("/console/api/clients/{pid}"),
    ("GET", "/console/api/clients/{pid}/enroll-form"): _per_patient("/console/api/clients/{pid}/enroll-form"),
    ("GET", "/console/api/outcomes"): lambda w: [Call("GET", "/console/api/outcomes")],
    ("GET", "/console/api/alerts"): lambda w: [Call("GET", "/console/api/alerts", {"limit": "500"})],
    ("GET", "/console/api/alerts/stream"): lambda w: [Call("GET", "/console/api/alerts/stream", {"after": "0"},
                                                           stream=True)],
    ("GET", "/console/api/alerts/{cid}"): lambda w: [Call("GET", f"/console/api/alerts/{c}") for c in w.alerts],
    ("GET", "/console/api/feeds"): lambda w: [Call("GET", "/console/api/feeds")],
}


def routes_of(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every route, included routers walked (FastAPI keeps them nested or flat)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from routes_of(inner.routes, prefix + route.include_context.prefix)
            continue
        for method in sorted(getattr(route, "methods", None) or []):
            if method == "HEAD" and "GET" in route.methods:
                continue
            yield method, prefix + route.path


def _send_call(w: World, call: Call) -> tuple[int, str]:
    kw: dict[str, Any] = {"params": call.params, "headers": {"Authorization": f"Bearer {CLINIC}", **call.headers}}
    if isinstance(call.body, bytes):
        kw["content"] = call.body
    elif call.body is not None:
        kw["json"] = call.body
    if call.stream:
        with w.http.stream(call.method, call.path, **kw) as resp:
            return resp.status_code, b"".join(resp.iter_bytes()).decode("utf-8", "replace")
    resp = w.http.request(call.method, call.path, **kw)
    return resp.status_code, resp.text


def test_every_route_keeps_outside_clients_out(world: World) -> None:
    table = list(dict.fromkeys(routes_of(world.http.app.routes)))  # type: ignore[attr-defined]
    # the audit trail first: an organisation's client sees its own accesses there, and the walk's own
    # probes (GET /fhir/Patient/<outside id> → 404) name the ids it sent
    table.sort(key=lambda route: "/AuditEvent" not in route[1])
    unknown = [f"{m} {p}" for m, p in table if (m, p) not in ROUTES]
    assert not unknown, ("routes without a rule in tests/test_privacy_boundary.py ROUTES (add one saying how to "
                         f"call it with ids of clients inside and outside the care team): {unknown}")
    leaks: list[str] = []
    calls = 0
    for method, path in table:
        for call in ROUTES[(method, path)](world):
            status, text = _send_call(world, call)
            calls += 1
            assert status < 500, f"{call.method} {call.path}: {status}"
            found = world.leaks(text)
            if found:
                leaks.append(f"{call.method} {call.path} {call.params} → {status}: {len(found)} outside marker(s)")
    assert not leaks, "\n".join(leaks)
    assert calls > 100


def test_the_walk_sees_the_inside_clients(world: World) -> None:
    """The walk is not vacuous: the same views list the clients inside the care teams."""
    roster = world.get("/console/api/roster").json()
    assert {c["id"] for c in roster["clients"]} == {world.inside[0]}
    cands = world.get("/fhir/Patient/$defi-sante-candidates").json()
    assert world.inside[1] in {e["resource"]["id"] for e in cands.get("entry", [])}
    assert world.get(f"/console/api/clients/{world.inside[0]}").status_code == 200
    assert world.get(f"/fhir/Patient/{world.inside[0]}").status_code == 200
    program = world.get("/console/api/roster", PROGRAM).json()
    assert {c["id"] for c in program["clients"]} == {world.inside[0], world.outside[0]}


# -- one test per finding ---------------------------------------------------------------------------
def test_finding_1_candidates_need_the_program_scope_and_list_own_clients_only(world: World) -> None:
    assert world.get("/fhir/Patient/$defi-sante-candidates", PATIENTS).status_code == 403
    assert world.get("/fhir/Patient/$defi-sante-candidates", PATIENTS, params={"_format": "csv"}).status_code == 403
    listed = world.get("/fhir/Patient/$defi-sante-candidates").json()
    ids = {e["resource"]["id"] for e in listed.get("entry", [])}
    assert ids <= set(world.inside)
    assert world.inside[1] in ids
    assert listed["total"] == sum(1 for e in listed["entry"] if e["search"]["mode"] == "match")
    csv = world.get("/fhir/Patient/$defi-sante-candidates", params={"_format": "csv"}).text
    assert world.inside[1] in csv
    assert not world.leaks(csv)
    everyone = world.get("/fhir/Patient/$defi-sante-candidates", PROGRAM).json()
    assert set(world.outside) <= {e["resource"]["id"] for e in everyone["entry"]}


def test_finding_2_program_views_list_own_care_teams_clients_only(world: World) -> None:
    outsider, insider = world.outside[0], world.inside[0]
    assert world.get(f"/console/api/clients/{outsider}").status_code == 404
    assert world.get(f"/console/api/clients/{outsider}/enroll-form").status_code == 404
    assert world.get(f"/console/api/clients/{insider}").status_code == 200
    for path in ("/console/api/roster", "/console/api/candidates", "/console/api/outcomes", "/console/api/alerts"):
        body = world.get(path).json()
        assert {p["reference"] for p in body["patient"]} <= {f"Patient/{p}" for p in world.inside}, path
    outcomes = world.get("/console/api/outcomes").json()
    assert [c["id"] for c in outcomes["clients"]] == [insider]
    group = world.get("/fhir/Group/defi-sante").json()
    assert [m["entity"]["reference"] for m in group["member"]] == [f"Patient/{insider}"]
    assert group["quantity"] == 1
    op = world.get("/fhir/Group/defi-sante/$defi-sante-outcomes", params={"patient": outsider}).text
    assert not world.leaks(op)
    assert world.get("/fhir/Group/defi-sante/$defi-sante-outcomes", PROGRAM, params={"patient": outsider}).text \
        != op  # the program sees the outsider's figures; the clinic, none
    mine = [a for a in world.get("/console/api/alerts").json()["alerts"]]
    assert mine
    assert {a["patient"]["id"] for a in mine} == {insider}
    theirs = [cid for cid in world.alerts if world.get(f"/console/api/alerts/{cid}", PROGRAM).json()
              .get("subject", {}).get("reference") == f"Patient/{outsider}"]
    assert theirs
    assert all(world.get(f"/console/api/alerts/{cid}").status_code == 404 for cid in theirs)
    # the limit counts the clinic's own alerts: newer alerts of other clients do not crowd them out
    latest = world.get("/console/api/alerts", PROGRAM, params={"limit": "1"}).json()["alerts"]
    assert [a["patient"]["id"] for a in latest] == [outsider]  # the network's latest is the outsider's
    assert [a["patient"]["id"] for a in world.get("/console/api/alerts", params={"limit": "1"}).json()["alerts"]] \
        == [insider]


def test_finding_2_the_alert_stream_carries_own_clients_alerts_only(world: World) -> None:
    def stream(token: str) -> str:
        with world.http.stream("GET", "/console/api/alerts/stream", params={"after": "0"},
                               headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status_code == 200
            return b"".join(resp.iter_bytes()).decode()

    program, clinic = stream(PROGRAM), stream(CLINIC)
    assert world.outside[0] in program
    assert world.inside[0] in program
    assert world.inside[0] in clinic
    assert world.outside[0] not in clinic


def test_finding_3_a_subscription_cannot_grant_itself_reach(world: World) -> None:
    wide = world.call("POST", "/fhir/Subscription", json=_subscription(wide=True))
    assert wide.status_code == 403
    assert "program_wide" in wide.json()["issue"][0]["diagnostics"]
    other = world.call("POST", "/fhir/Subscription", json=_subscription(owner="clinic-b"))
    assert other.status_code == 403
    assert "subscription-owner" in other.json()["issue"][0]["diagnostics"]
    batch = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Subscription"}, "resource": _subscription(wide=True)}]}
    assert world.call("POST", "/fhir", json=batch).status_code == 403
    made = world.call("POST", "/fhir/Subscription", json=_subscription(owner=ORG))
    assert made.status_code == 201
    exts = {e["url"]: e for e in made.json()["extension"]}
    assert exts[OWNER]["valueReference"]["reference"] == f"Organization/{ORG}"
    assert WIDE not in exts
    stamped = world.call("POST", "/fhir/Subscription", json=_subscription())
    assert {e["url"] for e in stamped.json()["extension"]} == {OWNER}  # the owner comes from the registration
    theirs = world.subscriptions["outside"]
    assert world.get(f"/fhir/Subscription/{theirs}").status_code == 404
    assert world.get(f"/fhir/Subscription/{theirs}/$events", params={"content": "full-resource"}).status_code == 404
    assert world.call("PUT", f"/fhir/Subscription/{theirs}",
                      json={**_subscription(), "id": theirs}).status_code == 404


def test_issue_16_a_subscription_nobody_would_receive_is_refused(world: World) -> None:
    refused = world.call("POST", "/fhir/Subscription", PROGRAM, json=_subscription())
    assert refused.status_code == 422
    text = refused.json()["issue"][0]["diagnostics"]
    assert "never be notified" in text
    assert "organization" in text
    assert "program_wide" in text


def test_finding_4_a_care_team_write_grants_no_access(world: World) -> None:
    outsider = world.outside[0]
    assert world.get(f"/fhir/Patient/{outsider}").status_code == 404
    teams = world.get("/fhir/CareTeam", PROGRAM, params={"patient": f"Patient/{outsider}"}).json()["entry"]
    team = teams[0]["resource"]
    joined = {**team, "participant": [*team.get("participant", []), {"member": {"reference": f"Organization/{ORG}"}}]}
    assert world.call("PUT", f"/fhir/CareTeam/{team['id']}", json=joined).status_code == 403
    fresh = {"resourceType": "CareTeam", "status": "active", "subject": {"reference": f"Patient/{outsider}"},
             "participant": [{"member": {"reference": f"Organization/{ORG}"}}]}
    assert world.call("POST", "/fhir/CareTeam", json=fresh).status_code == 403
    for kind in ("transaction", "batch"):
        bundle = {"resourceType": "Bundle", "type": kind, "entry": [
            {"request": {"method": "PUT", "url": f"CareTeam/{team['id']}"}, "resource": joined},
            {"request": {"method": "POST", "url": "CareTeam"}, "resource": fresh}]}
        resp = world.call("POST", "/fhir", json=bundle)
        statuses = [e["response"]["status"] for e in resp.json().get("entry", [])] if resp.status_code == 200 else []
        assert resp.status_code == 403 or all(s.startswith("403") for s in statuses), resp.text
    consent = {"resourceType": "Consent", "status": "active", "scope": {"coding": [{"code": "patient-privacy"}]},
               "category": [{"coding": [{"code": "59284-0"}]}], "patient": {"reference": f"Patient/{outsider}"}}
    assert world.call("POST", "/fhir/Consent", json=consent).status_code == 403
    # a care team it is in is its to change (and every change is an AuditEvent); one it is not in is not
    mine = world.get("/fhir/CareTeam", params={"patient": f"Patient/{world.inside[0]}"}).json()["entry"]
    own = next(e["resource"] for e in mine if e["resource"]["id"].startswith("gmf-a-"))
    program_team = next(e["resource"] for e in mine if not e["resource"]["id"].startswith("gmf-a-"))
    assert world.call("PUT", f"/fhir/CareTeam/{program_team['id']}", json=program_team).status_code == 403
    changed = {**own, "name": "Équipe GMF A"}
    assert world.call("PUT", f"/fhir/CareTeam/{own['id']}", json=changed).status_code == 200
    assert world.get(f"/fhir/Patient/{outsider}").status_code == 404  # still unknown to the clinic
    # nor can it fold a stranger into one of its clients by copying the stranger's NAM
    stranger = world.get(f"/fhir/Patient/{outsider}", PROGRAM).json()
    patient = world.get(f"/fhir/Patient/{world.inside[0]}").json()
    copied = {**patient, "identifier": [*patient.get("identifier", []), *stranger.get("identifier", [])]}
    assert world.call("PUT", f"/fhir/Patient/{world.inside[0]}", json=copied).status_code == 403
    assert world.call("PUT", f"/fhir/Patient/{world.inside[0]}", json=patient).status_code == 200


def test_conditional_writes_find_only_what_the_caller_may_know(world: World) -> None:
    """If-None-Exist, a conditional update and a conditional reference that match clients outside the
    caller's care teams answer exactly as when nothing matches: no 412 "several", no "unchanged"."""
    o1, o2 = world.outside
    patient = {"resourceType": "Patient", "name": [{"family": "Essai"}]}

    def answer(resp: Any) -> tuple[int, str]:
        body = resp.json()
        issues = body.get("issue") or [e["response"].get("outcome", {}).get("issue", [{}])[0]
                                       for e in body.get("entry", [])]
        return resp.status_code, json.dumps([i.get("diagnostics") for i in issues])

    def create(criteria: str) -> tuple[int, str]:
        return answer(world.call("POST", "/fhir/Patient", json=patient, headers={"If-None-Exist": criteria}))

    def update(criteria: str) -> tuple[int, str]:
        return answer(world.call("PUT", f"/fhir/Patient?{criteria}", json=patient))

    def reference(criteria: str) -> tuple[int, str]:
        encounter = {"resourceType": "Encounter", "status": "finished",
                     "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
                     "subject": {"reference": f"Patient?{criteria}"}}
        bundle = {"resourceType": "Bundle", "type": "transaction",
                  "entry": [{"request": {"method": "POST", "url": "Encounter"}, "resource": encounter}]}
        return answer(world.call("POST", "/fhir", json=bundle))

    for attempt in (create, update, reference):
        nobody = attempt("_id=nobody-0001")
        assert nobody[0] in (403, 412), nobody
        assert attempt(f"_id={o1}") == nobody, attempt.__name__
        assert attempt(f"_id={o1},{o2}") == nobody, attempt.__name__
    assert world.get(f"/fhir/Patient/{o1}").status_code == 404  # still unknown to the clinic
    # the program's staff still find them (its reach is the whole program)
    several = world.call("POST", "/fhir/Patient", PROGRAM, json=patient, headers={"If-None-Exist": f"_id={o1},{o2}"})
    assert several.status_code == 412, several.text


def test_finding_4_every_care_team_change_is_audited(world: World) -> None:
    audit = world.gw.settings.data_dir / "audit.sqlite"

    def changed_by() -> set[str]:
        events = [e for e in query_audit(audit, patient=world.inside[0])
                  if any(c.get("code") == "careteam-change" for c in e.get("subtype", []))]
        return {d["valueString"] for e in events for ent in e.get("entity", []) for d in ent.get("detail", [])
                if d["type"] == "client"}

    deadline = time.monotonic() + 10  # disclosures are queued: nobody waits for them
    while not {"case-program", "ehr-clinic-a"} <= changed_by() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert {"case-program", "ehr-clinic-a"} <= changed_by()  # the enrollment and the clinic's own change


def test_finding_8_included_resources_need_their_own_scope(world: World) -> None:
    resp = world.get("/fhir/Encounter", ENCOUNTERS, params={"_include": "Encounter:patient", "_count": "50"})
    assert resp.status_code == 200
    types = {e["resource"]["resourceType"] for e in resp.json()["entry"]}
    assert types == {"Encounter"}
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Encounter?_include=Encounter:patient&_count=50"}}]}
    inner = world.call("POST", "/fhir", ENCOUNTERS, json=batch).json()["entry"][0]["resource"]
    assert {e["resource"]["resourceType"] for e in inner["entry"]} == {"Encounter"}
    everything = world.get("/fhir/Encounter", PROGRAM, params={"_include": "Encounter:patient", "_count": "50"})
    assert "Patient" in {e["resource"]["resourceType"] for e in everything.json()["entry"]}


def test_the_boundary_and_the_subscriptions_name_the_same_extensions() -> None:
    from gateway.security import boundary
    from gateway.subscriptions import model

    assert (boundary.EXT_OWNER, boundary.EXT_PROGRAM_WIDE) == (model.EXT_OWNER, model.EXT_PROGRAM_WIDE)
