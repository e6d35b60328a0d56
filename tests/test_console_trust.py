"""What a case manager reads can be trusted, checked in headless Chromium on a simulated year:
names, never raw references; alert counts that agree with the alerts shown; a discharge alert at
the discharge time; the outcomes page stating its method on the same clients, with French plurals
("1 client"), readable ticks and no "0" bar where the text says "—". Screenshots of the outcomes
and client pages go to var/test-artifacts/console/ (the README's are copied from there)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from gateway.defisante.arrival import ZONE, visit_message
from tests.console_page_fixtures import open_console, shot
from tests.test_console_support import ServerThread, World, console_world
from tests.test_defisante_support import enroll_body

RAW_REFERENCE = re.compile(r"\b(?:Practitioner|PractitionerRole|Organization|RelatedPerson)/[\w.-]+")
MIN_DAYS = 180  # the world's clients are followed 215 and 145 days: one compared, one not


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    built = console_world(tmp_path_factory.mktemp("console-trust") / "var", outcomes_min_follow_up_days=MIN_DAYS)
    http = built.http
    pid = built.enrolled[0]
    patient = http.get(f"/fhir/Patient/{pid}").json()
    now = datetime.now(ZONE)
    built.send(visit_message(patient, site="HSJ", visit="VTRUST1", when=now - timedelta(hours=3)))
    built.drain()
    built.send(visit_message(patient, site="HSJ", visit="VTRUST1", trigger="A03", when=now - timedelta(hours=3),
                             departure=now - timedelta(minutes=20)))
    built.drain()
    ghost = built.candidates[2]["id"]  # enrolled now, by a case manager the store does not know
    resp = http.post(f"/fhir/Patient/{ghost}/$defi-sante-enroll", json=enroll_body("Practitioner/cm-ghost"))
    assert resp.status_code in (200, 201), resp.text
    built.enrolled.append(ghost)
    yield built
    built.http.close()
    built.gw.close()


def test_names_never_raw_references(page: Any, server: ServerThread, world: World) -> None:
    open_console(page, server, "#/clients")
    roster = page.locator("main").inner_text()
    assert not RAW_REFERENCE.search(roster), RAW_REFERENCE.findall(roster)
    assert "cm-ghost" in roster  # unknown to the store, no display: its id, not "Practitioner/cm-ghost"
    for pid in world.enrolled:
        open_console(page, server, f"#/clients/{pid}")
        text = page.locator("main").inner_text()
        assert not RAW_REFERENCE.search(text), (pid, RAW_REFERENCE.findall(text))


def test_alert_counts_agree_with_the_alerts_shown(page: Any, server: ServerThread, world: World) -> None:
    from playwright.sync_api import expect

    open_console(page, server, "#/clients")
    expect(page.locator("#recent-alerts li").first).to_be_visible()
    stat = page.locator("#stat-open")
    count = int(stat.locator("strong").inner_text())
    items = page.locator("#recent-alerts li")
    opened = page.locator("#recent-alerts li .badge.open").count()
    assert opened <= count
    for n in range(items.count()):  # every alert says whether it is open, so "0 open" beside alerts reads true
        assert re.search(r"ouverte|visite terminée|avis|fermée", items.nth(n).inner_text())
    label = stat.inner_text()
    assert ("alerte ouverte" in label) if count <= 1 else ("alertes ouvertes" in label)


def test_a_discharge_alert_shows_the_discharge_time(page: Any, server: ServerThread, world: World) -> None:
    pid = world.enrolled[0]
    data = world.http.get(f"/console/api/clients/{pid}").json()
    (visit,) = [v for v in data["visits"] if v["departure"] and v["site"].endswith("HSJ")
                and v["arrival"] >= (datetime.now(ZONE) - timedelta(hours=4)).isoformat()[:13]]
    (alert,) = [a for a in data["alerts"] if a["kind"] == "er-discharge"]
    assert alert["at"] == visit["departure"] != visit["arrival"]
    open_console(page, server, f"#/clients/{pid}")
    item = page.locator("ol.alert-list li", has_text="Départ de l’urgence").first
    assert item.locator("time").get_attribute("datetime") == visit["departure"]


def test_outcomes_state_the_method_on_the_same_clients(page: Any, server: ServerThread, world: World) -> None:
    from playwright.sync_api import expect

    cohort = world.http.get("/console/api/outcomes").json()["cohort"]
    assert (cohort["clientsCompared"], cohort["clientsInsufficientFollowUp"]) == (1, 2)
    open_console(page, server, "#/outcomes")
    expect(page.locator("#cohort-summary")).to_contain_text(f"1 client suivi au moins {MIN_DAYS} jours")
    main = page.locator("main").inner_text()
    assert "Les 1 clients" not in main
    assert "2 clients inscrits depuis moins de 180 jours" in main
    expect(page.locator("#outcomes-method")).to_contain_text("les mêmes clients des deux côtés")
    assert page.locator("#outcomes-table .badge", has_text="suivi insuffisant").count() == 2
    ticks = page.locator("svg.relative text.axis[text-anchor='end']").all_text_contents()
    assert ticks
    assert all(re.fullmatch(r"\d+(,\d)?", t) for t in ticks), ticks  # 0 / 0,5 / 1 — never 0,63 or 1,88
    # the last x label fits in the chart
    fits = page.evaluate("""() => { const svg = document.querySelector('svg.relative');
      const labels = [...svg.querySelectorAll("text.axis[text-anchor='middle']")];
      const box = labels[labels.length - 1].getBBox();
      return box.x + box.width <= svg.viewBox.baseVal.width; }""")
    assert fits
    shot(page, "outcomes-trust")


def test_a_client_without_follow_up_has_no_zero_bar(page: Any, server: ServerThread, world: World) -> None:
    ghost = world.enrolled[-1]
    outcome = world.http.get(f"/console/api/clients/{ghost}").json()["outcome"]
    assert outcome["erVisitsSinceAnnualised"] is None
    open_console(page, server, f"#/clients/{ghost}")
    bars = page.locator("svg.bars")
    assert bars.locator("rect").count() == 1  # the year before only
    assert "—" in bars.locator("text.value").all_text_contents()
    assert "0" not in bars.locator("text.value").all_text_contents()
    assert page.locator("#follow-up-note").is_visible()
    months = page.locator("svg.months text.axis[text-anchor='end']").all_text_contents()
    assert all(t.isdigit() for t in months), months
