"""The console in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright), served
by uvicorn from a gateway fed with a simulated year: the pages render real data, the language
switches, a new ER arrival appears live, the keyboard reaches and drives the enroll form, the feed
health page warns of silent feeds, and no request ever leaves localhost. Screenshots are saved
under var/test-artifacts/console/ (or $PIVOT_TEST_ARTIFACTS)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest

from tests.console_page_fixtures import open_console, shot
from tests.test_console_support import (
    CHROMIUM,
    EXPECTED_SILENT,
    QUIET_SENDER,
    ServerThread,
    World,
    arrival,
    console_world,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    built = console_world(tmp_path_factory.mktemp("console-pages") / "var")
    yield built
    built.http.close()
    built.gw.close()


def test_chromium_is_installed() -> None:
    assert CHROMIUM.exists(), f"Chromium not found at {CHROMIUM}: `make browser` installs Debian's chromium " \
        "(CI runs it before the tests)"


def test_roster_and_candidates_render_from_real_data(page: Any, server: ServerThread, world: World) -> None:
    from playwright.sync_api import expect

    open_console(page, server)
    roster = world.http.get("/console/api/roster").json()["clients"]
    expect(page.locator("main h1")).to_have_text("Clients du Défi Santé")
    rows = page.locator("#roster-table tbody tr")
    expect(rows).to_have_count(sum(1 for r in roster if r["status"] == "active"))
    for row in roster:
        expect(page.locator("#roster-table")).to_contain_text(row["name"])
        expect(page.locator("#roster-table")).to_contain_text(row["lastVisit"]["siteLabel"])
    shot(page, "roster")
    page.get_by_role("link", name="Candidats").click()
    expect(page.locator("main h1")).to_have_text("Candidats au Défi Santé")
    candidates = world.http.get("/console/api/candidates").json()["candidates"]
    table = page.locator("#candidates-table tbody tr")
    expect(table).to_have_count(len(candidates))
    first = table.first
    expect(first).to_contain_text(candidates[0]["name"])
    expect(first).to_contain_text(candidates[0]["mainDiagnoses"][0]["display"])
    expect(first).to_contain_text(f"{candidates[0]['visits']} visites ≥ 4 en 12 mois")
    shot(page, "candidates")


def test_the_language_toggle_switches_to_english_and_back(page: Any, server: ServerThread) -> None:
    from playwright.sync_api import expect

    open_console(page, server)
    html = page.locator("html")
    expect(html).to_have_attribute("lang", "fr")
    toggle = page.locator("#lang")
    expect(toggle).to_have_text("English")
    expect(toggle).to_have_attribute("lang", "en")
    toggle.click()
    expect(html).to_have_attribute("lang", "en")
    expect(page.locator("main h1")).to_have_text("Défi Santé clients")
    expect(page.locator("nav")).to_contain_text("Candidates")
    expect(page.locator("nav")).to_have_attribute("aria-label", "Main navigation")
    expect(page.locator("#roster-table thead")).to_contain_text("Last ER visit")
    expect(toggle).to_have_text("Français")
    expect(toggle).to_have_attribute("lang", "fr")
    expect(toggle).to_be_focused()  # the toggle keeps the focus while the page is redrawn
    page.goto(f"{server.base}/console/#/feeds")
    page.reload()  # the choice is remembered (localStorage)
    expect(page.locator("main h1")).to_have_text("Feed health")
    shot(page, "feeds-en")
    toggle.click()
    expect(html).to_have_attribute("lang", "fr")
    expect(page.locator("main h1")).to_have_text("État des interfaces")


def test_a_new_er_arrival_appears_live_without_reload(page: Any, server: ServerThread, world: World) -> None:
    from playwright.sync_api import expect

    open_console(page, server)
    expect(page.locator("#live-status")).to_have_attribute("data-status", "live")
    region = page.locator("#live-alerts")
    expect(region).to_have_attribute("role", "log")
    expect(region).to_have_attribute("aria-live", "polite")
    page.evaluate("window.__notReloaded = true")
    pid = world.enrolled[0]
    name = next(r["name"] for r in world.http.get("/console/api/roster").json()["clients"] if r["id"] == pid)
    arrival(world, pid)  # an A04 through the intake, now, at Sainte-Agathe
    item = region.locator("li").first
    expect(item).to_contain_text(name)
    expect(item).to_contain_text("Arrivée à l’urgence")
    expect(item).to_contain_text("Hôpital Sainte-Agathe")
    assert page.evaluate("window.__notReloaded") is True
    # the roster (focus not in it) is redrawn: the client is in the ER now, with an open alert
    row = page.locator("#roster-table tbody tr", has_text=name)
    expect(row).to_contain_text("À l’urgence maintenant")
    shot(page, "live-alert")
    item.get_by_role("link", name=name).click()
    expect(page.locator("main h1")).to_have_text(name)
    expect(page.locator("main h1")).to_be_focused()


def test_the_keyboard_reaches_the_enroll_button_and_enrolls(page: Any, server: ServerThread, world: World) -> None:
    from playwright.sync_api import expect

    open_console(page, server, "#/candidates")
    candidate = world.http.get("/console/api/candidates").json()["candidates"][0]
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('enroll')"):
            break
    else:
        raise AssertionError("Tab never reached an enroll button")
    focused = page.locator("button.enroll:focus")
    expect(focused).to_have_accessible_name(f"Inscrire {candidate['name']}")
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"  # visible focus
    page.keyboard.press("Enter")
    dialog = page.locator("#enroll-dialog")
    expect(dialog).to_have_attribute("open", "")
    expect(page.locator("#enroll-cm")).to_be_focused()
    expect(dialog).to_contain_text("Dre Marie Bélanger")  # the family doctor on file, by default
    expect(page.get_by_label("Non")).to_be_checked()
    expect(page.get_by_label("Oui")).to_be_disabled()  # no relative on file: nobody to name
    page.keyboard.press("ArrowDown")  # second case manager
    expect(page.locator("#enroll-cm")).to_have_value("Practitioner/cm-ts")
    shot(page, "enroll-form")
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "enroll-submit":
            break
    page.keyboard.press("Enter")
    expect(page.locator("main h1")).to_have_text(candidate["name"])
    expect(page.locator("#announce")).to_contain_text("est inscrit(e) au Défi Santé")
    world.enrolled.append(candidate["id"])
    roster = {r["id"]: r for r in world.http.get("/console/api/roster").json()["clients"]}
    assert roster[candidate["id"]]["caseManager"] == "Marc Caron, t.s."
    client = world.http.get(f"/console/api/clients/{candidate['id']}").json()
    assert {m["role"] for m in client["careTeam"]} == {"case-manager", "family-doctor"}


def test_client_page_and_the_before_after_charts(page: Any, server: ServerThread, world: World) -> None:
    from playwright.sync_api import expect

    pid = world.enrolled[1]
    data = world.http.get(f"/console/api/clients/{pid}").json()
    open_console(page, server, f"#/clients/{pid}")
    expect(page.locator("main h1")).to_have_text(data["patient"]["name"])
    timeline = page.locator("svg.timeline")
    expect(timeline).to_have_attribute("role", "img")
    expect(timeline.locator("circle")).to_have_count(len(data["visits"]))
    expect(page.locator("svg.bars rect")).to_have_count(2)
    expect(page.locator("svg.months rect")).to_have_count(len(data["months"]))
    expect(page.locator("main")).to_contain_text("Gestionnaire de cas — Julie Tremblay, inf. clinicienne")
    shot(page, "client")
    page.get_by_role("link", name="Résultats").click()
    cohort = world.http.get("/console/api/outcomes").json()["cohort"]
    headline = page.locator("#cohort-headline .big")

    def fr(value: float) -> str:
        """Intl.NumberFormat('fr-CA', {maximumFractionDigits: 1}): the double's exact value rounded half
        away from zero (ECMA-402 "halfExpand"; Python's round() is half-even: 22.25 gives 22.2, the page 22,3)."""
        text = f"{Decimal(value).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP):f}"
        return text.removesuffix(".0").replace(".", ",")

    expect(headline.first).to_have_text(fr(cohort["erVisitsPerClientYearBefore"]))
    expect(headline.last).to_have_text(fr(cohort["erVisitsPerClientYearSince"]))
    expect(page.locator("svg.dumbbells circle.dot-before")).to_have_count(cohort["clientsCompared"])
    shot(page, "outcomes")


def test_feed_health_shows_each_sender_and_warns_of_silence(page: Any, server: ServerThread, world: World) -> None:
    from playwright.sync_api import expect

    open_console(page, server, "#/feeds")
    warning = page.locator("#silent-warning")
    expect(warning).to_contain_text("Saint-Jérôme — urgence")  # QUIET_SENDER: a 1.2 s threshold
    expect(warning).to_contain_text("Pays-d’en-Haut — urgence")  # expected, never spoke
    feeds = page.locator("#feeds-table")
    quiet = feeds.locator("tbody tr", has_text=QUIET_SENDER)
    expect(quiet).to_contain_text("Silencieux")
    expect(feeds.locator("tbody tr", has_text=EXPECTED_SILENT)).to_contain_text("jamais reçu")
    hsa = feeds.locator("tbody tr", has_text="URGENCE|CSSS-SOMMETS-HSA")
    aa = world.sent[("URGENCE|CSSS-SOMMETS-HSA", "AA")]
    expect(hsa).to_contain_text(f"AA {aa}")  # fewer than 1,000: no thousands separator
    expect(hsa).to_contain_text("AR 1")
    expect(hsa).not_to_contain_text("Silencieux")
    expect(hsa.locator("svg.spark")).to_have_count(1)
    expect(page.locator("#quarantine-groups")).to_contain_text("ADT^A99^ADT_A01")
    shot(page, "feeds")
