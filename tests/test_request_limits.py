"""Limits before parsing (issue 13, finding 7): the scope check before a body is read, body sizes
enforced while reading, JSON shape and query parameter limits, and bad input → 4xx OperationOutcome.

The memory test runs ``pivot serve`` and watches its peak RSS (VmHWM) while ~52 MB bodies are
posted with a read-only and with a write token; the others go through the whole app in-process
(``create_app``, the guard and the limits included), with small limits where size matters.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.app import Gateway, create_app
from gateway.security.limits import Limits, check_json_shape
from gateway.settings import load_settings
from tests.security_helpers import tokens_file

READER = "reader-token-0123456789"
WRITER = "writer-token-0123456789"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
SUBSCRIPTION = {"resourceType": "Subscription", "status": "requested", "reason": "limits test",
                "criteria": "Flag?code=defi-sante",
                "channel": {"type": "rest-hook", "endpoint": "https://ehr.example.org/hook",
                            "payload": "application/fhir+json"}}


def _tokens(path: Path) -> Path:
    return tokens_file(path, {READER: {"client_id": "reader", "scopes": ["system/*.rs"]},
                              WRITER: {"client_id": "writer", "scopes": ["system/*.cruds"]}})


def _as(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def _outcome(resp: httpx.Response, status: int) -> str:
    """The diagnostics of an OperationOutcome answer with ``status`` (asserting both)."""
    assert resp.status_code == status, resp.text[:300]
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome"
    return str(body["issue"][0].get("diagnostics", ""))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The gateway's app with token auth and small body limits (1 MiB, bundles 2 MiB, forms 4 KiB)."""
    root = tmp_path_factory.mktemp("limits")
    settings = load_settings(data_dir=root / "var", workers=False, auth="tokens",
                             auth_tokens_file=_tokens(root / "tokens.json"), http_max_body_bytes=1 << 20,
                             http_max_bundle_bytes=2 << 20, http_max_form_bytes=4096)
    gw = Gateway(settings)
    with TestClient(create_app(gw), raise_server_exceptions=False) as client:
        yield client
    gw.close()


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """ERROR records logged during the test (a 500's traceback is one); the test asserts it empty."""
    caplog.set_level(logging.WARNING)
    found: list[logging.LogRecord] = []
    yield found
    found.extend(r for r in caplog.records if r.levelno >= logging.ERROR)
    assert not found, [r.getMessage()[:200] for r in found]


# -- JSON shape -----------------------------------------------------------------------------------------
def test_json_nested_1000_deep_is_a_400_everywhere(app: TestClient, errors: list[logging.LogRecord]) -> None:
    deep = "[" * 1000 + "]" * 1000
    patient = '{"resourceType":"Patient","extension":' + deep + "}"
    for path, body in (("/fhir/Patient", deep), ("/fhir/Patient", patient), ("/fhir", deep),
                       ("/fhir", '{"resourceType":"Bundle","type":"batch","entry":' + deep + "}")):
        assert "nested deeper than 64" in _outcome(app.post(path, content=body, headers=_as(WRITER, **FHIR_JSON)),
                                                    400)
    # 64 levels are fine: a refusal by the model (422), not by the limit
    ok = '{"resourceType":"Patient","extension":' + "[" * 63 + "]" * 63 + "}"
    assert app.post("/fhir/Patient", content=ok, headers=_as(WRITER, **FHIR_JSON)).status_code in (201, 422)


def test_long_arrays_and_too_many_values_are_400(app: TestClient, errors: list[logging.LogRecord]) -> None:
    long_array = json.dumps({"resourceType": "Patient", "name": [{"family": "X"}] * 10_001})
    assert "more than 10000 elements" in _outcome(
        app.post("/fhir/Patient", content=long_array, headers=_as(WRITER, **FHIR_JSON)), 400)
    bundle = json.dumps({"resourceType": "Bundle", "type": "batch",
                         "entry": [{"request": {"method": "GET", "url": "Patient/x"}}] * 10_001})
    assert "more than 10000 elements" in _outcome(
        app.post("/fhir", content=bundle, headers=_as(WRITER, **FHIR_JSON)), 400)


def test_the_shape_pre_scan_is_linear_and_exact() -> None:
    limits = Limits(json_depth=4, json_array=3, json_values=50)

    def refused(raw: bytes) -> str:
        try:
            check_json_shape(raw, limits)
        except Exception as exc:  # the message is what is checked
            return str(exc)
        return ""

    assert not refused(b'[[[["]]]]]]\\"[[[["]]]]')  # brackets in strings, an escaped quote: not structure
    assert "deeper" in refused(b"[[[[[]]]]]")
    assert not refused(b'{"a":[1,2,3],"b":{"c":[{}]}}')
    assert "elements" in refused(b'{"a":[1,2,3,4]}')
    assert "elements" in refused(b'{"a":1,"b":2,"c":3,"d":4}')  # an object's members too
    assert "values" in refused(b"[" + b"[1,2],[3]," * 20 + b"[]]")
    assert not refused(b'"unterminated \\')  # not JSON: left to json.loads (a 400 there)


# -- query parameters --------------------------------------------------------------------------------------
def test_thousands_of_search_parameters_are_a_400(app: TestClient, errors: list[logging.LogRecord]) -> None:
    query = "&".join(f"name=n{i}" for i in range(3000))
    assert "more than 100 parameters" in _outcome(app.get(f"/fhir/Patient?{query}", headers=_as(READER)), 400)
    ids = ",".join(f"p{i}" for i in range(3000))
    assert "more than 100" in _outcome(app.get(f"/fhir/Patient?_id={ids}", headers=_as(READER)), 400)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert "more than 100" in _outcome(app.post("/fhir/Patient/_search", content="&".join(f"_id={i}" for i in range(
        200)), headers=_as(READER, **form)), 400)
    assert app.get("/fhir/Patient?" + "&".join(f"name=n{i}" for i in range(50)), headers=_as(READER)).status_code \
        == 200


# -- bodies ----------------------------------------------------------------------------------------------
def _chunks(size: int, piece: bytes = b"0," * 32_768) -> Iterator[bytes]:
    """A JSON array of about ``size`` bytes sent chunked (no Content-Length)."""
    yield b"["
    for _ in range(size // len(piece)):
        yield piece
    yield b"0]"


def test_bodies_over_the_route_limit_are_413(app: TestClient, errors: list[logging.LogRecord]) -> None:
    big = b"[" + b"0," * (1 << 20) + b"0]"  # 2 MiB: over the 1 MiB of a resource
    assert "limit" in _outcome(app.post("/fhir/Patient", content=big, headers=_as(WRITER, **FHIR_JSON)), 413)
    chunked = app.post("/fhir/Patient", content=_chunks(3 << 20), headers=_as(WRITER, **FHIR_JSON))
    assert "limit" in _outcome(chunked, 413)
    huge = b"[" + b"0," * (2 << 20) + b"0]"  # 4 MiB: over the 2 MiB of a Bundle
    assert "limit" in _outcome(app.post("/fhir", content=huge, headers=_as(WRITER, **FHIR_JSON)), 413)
    assert "limit" in _outcome(app.post("/fhir", content=_chunks(3 << 20), headers=_as(WRITER, **FHIR_JSON)), 413)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert "limit" in _outcome(app.post("/fhir/Patient/_search", content=b"name=" + b"x" * 8000,
                                        headers=_as(READER, **form)), 413)
    assert app.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=_as(WRITER)).status_code == 201


def test_a_read_only_client_is_refused_before_its_body_is_read(app: TestClient,
                                                               errors: list[logging.LogRecord]) -> None:
    big = b"[" + b"0," * (1 << 20) + b"0]"
    assert "insufficient scope" in _outcome(app.post("/fhir/Patient", content=big,
                                                     headers=_as(READER, **FHIR_JSON)), 403)
    # a client without write scopes may send a batch of reads only: a larger Bundle is a 403 too
    assert "needs write scopes" in _outcome(app.post("/fhir", content=big, headers=_as(READER, **FHIR_JSON)), 403)
    assert "needs write scopes" in _outcome(app.post("/fhir", content=_chunks(1 << 20),
                                                     headers=_as(READER, **FHIR_JSON)), 403)
    reads = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "Patient/x"}}]}
    assert app.post("/fhir", json=reads, headers=_as(READER)).status_code == 200
    assert app.post("/fhir", content=b"[1]", headers=_as(READER, **FHIR_JSON)).status_code == 403  # not a Bundle


# -- bad input is a 4xx OperationOutcome, never a 500 --------------------------------------------------------
@pytest.mark.parametrize("endpoint", [["https://ehr.example.org/hook"], 5, {"url": "https://x"}, True])
def test_a_malformed_subscription_endpoint_is_a_4xx(app: TestClient, errors: list[logging.LogRecord],
                                                    endpoint: Any) -> None:
    sub = json.loads(json.dumps(SUBSCRIPTION))
    sub["channel"]["endpoint"] = endpoint
    resp = app.post("/fhir/Subscription", json=sub, headers=_as(WRITER))
    assert resp.status_code in (400, 422), resp.text[:300]
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert "Subscription" in _outcome(resp, resp.status_code)


_WRONG = (5, "x", [1], {"a": 1}, True, [[]], -1.5, ["x"], [{"a": [1]}])


# url-typed elements: the model's validator crashed on a non-string there (TypeError, AttributeError)
_URL_ELEMENTS = {"Patient": lambda v: {"photo": [{"url": v}]},
                 "Communication": lambda v: {"status": "completed", "payload": [{"contentAttachment": {"url": v}}]},
                 "Subscription": lambda v: {**SUBSCRIPTION, "channel": {**SUBSCRIPTION["channel"], "endpoint": v}}}


@pytest.mark.parametrize("rtype", sorted(_URL_ELEMENTS))
def test_wrong_types_for_every_top_level_element_are_4xx(app: TestClient, errors: list[logging.LogRecord],
                                                         rtype: str) -> None:
    from gateway.fhir.models import _model

    fields = sorted({f.alias or n for n, f in _model(rtype).model_fields.items()} - {"resourceType", "id"})
    fields = [f for f in fields if not f.startswith("_") and not f.endswith("__ext")]
    assert len(fields) > 10
    bodies = [{field: bad} for n, field in enumerate(fields)
              for bad in (_WRONG[n % len(_WRONG)], _WRONG[(n + 3) % len(_WRONG)])]
    bodies += [_URL_ELEMENTS[rtype](bad) for bad in _WRONG if not isinstance(bad, str)]
    for body in bodies:
        resp = app.post(f"/fhir/{rtype}", json={**body, "resourceType": rtype}, headers=_as(WRITER))
        assert 400 <= resp.status_code < 500, (body, resp.status_code)
        assert resp.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), [
    ("GET", "/fhir/Patient/p1/_history/99999999999999999999999", {}, 404),
    ("GET", "/fhir/Patient/p1/_history/\u00b2", {}, 404),
    ("PUT", "/fhir/Patient/p1", {"json": {"resourceType": "Patient", "id": "p1"},
                                 "headers": {"If-Match": 'W/"99999999999999999999999"'}}, 400),
    ("POST", "/fhir", {"json": {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1"}, "request": {"method": "PUT", "url": "Patient/p1",
                                                                         "ifMatch": 5}}]}}, 200),
    ("POST", "/fhir", {"json": {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1"}, "request": {"method": "PUT", "url": "Patient/p1",
                                                                         "ifMatch": [1]}}]}}, 400),
    ("POST", "/fhir/Patient", {"content": b'{"resourceType":"Patient","gender":"\xff"}', "headers": FHIR_JSON}, 400),
    ("POST", "/fhir/Patient", {"content": b"<Patient/>", "headers": {"Content-Type": "application/xml"}}, 415),
    ("GET", "/fhir/Patient?_count=99999999999999999999999", {}, 200),
    ("GET", "/fhir/Encounter?date=gt2020-13-45", {}, 400),
])
def test_bad_input_found_by_fuzzing_is_a_4xx(app: TestClient, errors: list[logging.LogRecord], method: str,
                                            path: str, kwargs: dict[str, Any], status: int) -> None:
    headers = _as(WRITER, **kwargs.pop("headers", {}))
    resp = app.request(method, path, headers=headers, **kwargs)
    assert resp.status_code == status, resp.text[:300]
    if status != 200:
        assert resp.json()["resourceType"] == "OperationOutcome"
    elif resp.json().get("type") == "batch-response":
        assert resp.json()["entry"][0]["response"]["status"].startswith("400")


@pytest.mark.parametrize(("raised", "status"), [(sqlite3.OperationalError("too many SQL variables"), 400),
                                               (OverflowError("Python int too large"), 400),
                                               (RecursionError(), 400), (RuntimeError("a bug"), 500)])
def test_what_bad_input_raises_deep_down_is_a_400_and_a_bug_still_a_500(
        app: TestClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, raised: Exception,
        status: int) -> None:
    from gateway.fhirstore import FhirStore

    def search(*_args: Any, **_kwargs: Any) -> Any:
        raise raised

    monkeypatch.setattr(FhirStore, "search", search)
    caplog.set_level(logging.WARNING, logger="pivot.fhir")
    _outcome(app.get("/fhir/Patient?name=x", headers=_as(READER)), status)
    levels = {r.levelname for r in caplog.records if r.name == "pivot.fhir"}
    assert levels == ({"WARNING"} if status == 400 else {"ERROR"})
    assert "SQL variables" not in caplog.text  # the type is logged, never the message


# -- through pivot serve: memory -----------------------------------------------------------------------------
def _peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_52_mb_bodies_leave_the_memory_of_pivot_serve_alone(serve_factory: Any, tmp_path: Path) -> None:
    gw = serve_factory(env={"PIVOT_AUTH": "tokens", "PIVOT_AUTH_TOKENS_FILE": str(_tokens(tmp_path / "t.json")),
                            "PIVOT_WORKERS": "false"}).start(timeout_s=90)
    assert gw.proc is not None
    base = gw.base
    with httpx.Client(base_url=base, timeout=60) as http:
        # warm up every path the posts take (imports, first allocations), then take the peak so far
        assert http.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=_as(WRITER)).status_code == 201
        assert http.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": []},
                         headers=_as(READER)).status_code == 200
        before = _peak_rss_mb(gw.proc.pid)
        body = b"[" + b"0," * (26 * 1024 * 1024) + b"0]"  # 52 MB: 27 million numbers once parsed
        answers = {
            ("read-only", "/fhir/Patient"): http.post("/fhir/Patient", content=body, headers=_as(READER, **FHIR_JSON)),
            ("read-only", "/fhir"): http.post("/fhir", content=body, headers=_as(READER, **FHIR_JSON)),
            ("write", "/fhir/Patient"): http.post("/fhir/Patient", content=body, headers=_as(WRITER, **FHIR_JSON)),
            ("write", "/fhir"): http.post("/fhir", content=body, headers=_as(WRITER, **FHIR_JSON)),
            ("write, chunked", "/fhir/Patient"): http.post("/fhir/Patient", content=_chunks(len(body)),
                                                           headers=_as(WRITER, **FHIR_JSON)),
        }
        after = _peak_rss_mb(gw.proc.pid)
        assert http.get("/healthz").status_code == 200
    statuses = {key: resp.status_code for key, resp in answers.items()}
    assert statuses == {("read-only", "/fhir/Patient"): 403, ("read-only", "/fhir"): 403,
                        ("write", "/fhir/Patient"): 413, ("write", "/fhir"): 413,
                        ("write, chunked", "/fhir/Patient"): 413}
    assert all(r.json()["resourceType"] == "OperationOutcome" for r in answers.values())
    assert after - before < 100, f"peak RSS grew {after - before:.0f} MB ({before:.0f} → {after:.0f})"
    gw.stop()
    logs = gw.logs()
    assert "Traceback" not in logs
    assert " ERROR " not in logs
