"""The console behind the HTTP guard with authentication on (PIVOT_AUTH=tokens), with the route-table
entries of gateway/security/access.py: the shell is open, the API needs the case
managers' scope and is audited per Patient, feed health needs metrics.r, the alert stream flows
through the guard unheld, and the page signs in with a token (headers on fetch and on the stream)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.console.access import ConsoleAccess, console_access
from gateway.security.audit_trail import query_audit
from tests.security_helpers import tokens_file
from tests.test_console_support import ServerThread, World, console_app, console_world, launch_chromium

CM_TOKEN = "case-manager-token-0123456789"
IT_TOKEN = "hospital-it-token-0123456789"
def test_the_console_table() -> None:
    assert console_access("GET", "/console") == ConsoleAccess(open=True)
    assert console_access("GET", "/console/static/app.js") == ConsoleAccess(open=True)
    assert console_access("POST", "/console/static/app.js") is None
    assert console_access("GET", "/console/api/feeds") == ConsoleAccess(resource="metrics", letters="r")
    assert console_access("GET", "/console/api/alerts/stream") == ConsoleAccess(resource="defi-sante", letters="r")
    assert console_access("GET", "/console/api/clients/p1/enroll-form") == ConsoleAccess(
        resource="defi-sante", letters="r", audited=True, patient="p1")
    assert console_access("GET", "/console/api/roster").audited is True
    assert console_access("GET", "/console/other") is None
    assert console_access("GET", "/consoles") is None
    assert console_access("DELETE", "/console/api/roster") is None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("console-security")
    tokens = tokens_file(root / "tokens.json", {
        CM_TOKEN: {"client_id": "gestion-de-cas", "scopes": ["system/defi-sante.rs", "system/defi-sante.c",
                                                               "system/Patient.r"]},
        IT_TOKEN: {"client_id": "ti-hopital", "scopes": ["system/metrics.r"]},
    })
    built = console_world(root / "var", headers={"Authorization": f"Bearer {CM_TOKEN}"}, auth="tokens",
                          auth_tokens_file=tokens)
    yield built
    built.http.close()
    built.gw.close()


def _as(world: World, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {"Authorization": ""}
    return world.http.get(path, headers=headers)


def test_the_shell_is_open_and_the_api_needs_the_case_managers_scope(world: World) -> None:
    assert _as(world, "/console/", None).status_code == 200
    assert _as(world, "/console/static/app.js", None).status_code == 200
    assert _as(world, "/console/api/roster", None).status_code == 401
    assert _as(world, "/console/api/roster", IT_TOKEN).status_code == 403
    assert _as(world, "/console/api/roster", CM_TOKEN).status_code == 200
    assert _as(world, "/console/api/feeds", IT_TOKEN).status_code == 200
    assert _as(world, "/console/api/feeds", CM_TOKEN).status_code == 403  # minimum necessary
    assert _as(world, "/console/nothing-here", CM_TOKEN).status_code == 403  # deny by default


def test_console_reads_are_audited_per_patient(world: World) -> None:
    audit = world.gw.settings.data_dir / "audit.sqlite"
    pid = world.enrolled[0]
    before = len(query_audit(audit, patient=pid))
    assert _as(world, "/console/api/roster", CM_TOKEN).status_code == 200
    assert _as(world, f"/console/api/clients/{pid}", CM_TOKEN).status_code == 200
    events = query_audit(audit, patient=pid)[before:]
    assert len(events) == 2
    assert {e["agent"][0]["who"]["identifier"]["value"] for e in events} == {"gestion-de-cas"}
    assert _as(world, "/console/api/feeds", IT_TOKEN).status_code == 200
    assert len(query_audit(audit, patient=pid)) == before + 2  # feed health names nobody


def test_the_alert_stream_flows_through_the_guard(world: World) -> None:
    server = ServerThread(console_app(world.gw, stream_max_s=30)).start()
    try:
        started = time.monotonic()
        url = f"{server.base}/console/api/alerts/stream"
        with httpx.stream("GET", url, headers={"Authorization": f"Bearer {CM_TOKEN}"}, timeout=10) as resp:
            assert resp.status_code == 200
            first = next(resp.iter_lines(), "")
            assert first == "retry: 1000"
        assert time.monotonic() - started < 5  # not held until the stream's end (30 s)
        assert httpx.get(url, timeout=10).status_code == 401
    finally:
        server.stop()


def test_the_page_signs_in_with_a_token(world: World) -> None:
    from playwright.sync_api import expect, sync_playwright

    server = ServerThread(console_app(world.gw, stream_max_s=5)).start()
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(f"{server.base}/console/")
            dialog = page.locator("#signin-dialog")
            expect(dialog).to_have_attribute("open", "")
            expect(page.locator("#signin-token")).to_be_focused()
            page.keyboard.type(CM_TOKEN)
            page.keyboard.press("Enter")
            expect(page.locator("main h1")).to_have_text("Clients du Défi Santé")
            expect(page.locator("#roster-table tbody tr")).to_have_count(len(world.enrolled))
            expect(page.locator("#live-status")).to_have_attribute("data-status", "live")  # stream, with the header
            browser.close()
    finally:
        server.stop()
