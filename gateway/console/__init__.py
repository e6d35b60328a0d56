"""The case managers' web console and the feed-health page (issue #6, item 3), at ``/console``.

    routes.py      make_console_router(get_gateway): the pages, the static files, /console/api/…
    config.py      console.json: silent-feed thresholds, expected senders, site names, case managers
    common.py      ConsoleSource (what the console reads of a gateway), visit shapes
    people.py      names and references as the pages show them; the audit's ``patient`` list
    roster.py      enrolled clients: flag, last ER visit and site, open alerts
    candidates.py  the candidate list with its reasons
    client.py      one client: ER visits across sites, medications, dispenses, alerts, team, plan
    enroll.py      what the enroll form offers (the form posts $defi-sante-enroll to /fhir)
    outcomes.py    before/after ER visits per client and for the cohort; series.py: month series
    alerts.py      alerts (Communication?category=alert), open or not; the live feed's cursor
    stream.py      server-sent events of new alerts
    feeds.py       feed health per sender, from the event log's headers (logtail.py: bounded reads)
    assets.py      static/: index.html, *.js, console.css, fr.json / en.json (the strings, as data)

The pages are plain HTML, vanilla JavaScript modules and CSS; charts are inline SVG drawn by
static/charts.js; nothing is loaded from another origin (Content-Security-Policy 'self').
"""

from gateway.console.routes import make_console_router

__all__ = ["make_console_router"]
