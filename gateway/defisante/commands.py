"""``pivot candidates``, ``pivot outcomes``, ``pivot simulate``: the program from the command line.

``candidates`` and ``outcomes`` read the local embedded store (``PIVOT_DATA_DIR/fhir.sqlite``, the
one ``pivot serve`` fills; safe while it runs) and print a table, or CSV with ``--csv``. ``simulate``
writes a year of ADT (``gateway.simulate``) to stdout or ``--out``, its ground truth to
``--truth``; with ``--arrival-of PATIENT_ID`` it prints one ADT of a visit of that stored Patient
instead (the README walkthrough pipes it to ``pivot ingest -``); with ``--visit V`` (the Encounter's
visit number, its ``identifier``) a discharge or cancel keeps the stored arrival.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, date, datetime, timedelta
from typing import IO, Any

from gateway.defisante import candidates as cand
from gateway.defisante import outcomes
from gateway.defisante.arrival import site_codes, visit_message
from gateway.defisante.roster import read
from gateway.defisante.service import DefiSante
from gateway.errors import GatewayError
from gateway.fhirstore import FhirStore
from gateway.settings import Settings


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the three commands on ``pivot``'s sub-parsers."""
    c = sub.add_parser("candidates", help="Défi Santé: frequent ER users, ranked (the local store)")
    c.add_argument("--csv", action="store_true", help="CSV on stdout instead of a table")
    c.add_argument("--window", type=int, default=cand.DEFAULT_WINDOW_MONTHS, help="window in months (12)")
    c.add_argument("--threshold", type=int, default=cand.DEFAULT_THRESHOLD, help="minimum counted visits (4)")
    c.add_argument("--top", type=int, default=cand.DEFAULT_TOP, help="at most this many candidates (200)")
    c.add_argument("--date", type=date.fromisoformat, help="reference date YYYY-MM-DD (latest visit)")
    c.add_argument("--exclusion", help="rule ids to apply instead of the enabled ones (comma list, or none)")
    o = sub.add_parser("outcomes", help="Défi Santé: ER visits before / since enrollment, per client and cohort")
    o.add_argument("--csv", action="store_true", help="CSV on stdout instead of a table")
    o.add_argument("--date", help="as-of date or dateTime (default now)")
    s = sub.add_parser("simulate", help="write a simulated year of ER ADT (fictitious people) and its ground truth")
    s.add_argument("--sites", type=int, default=3)
    s.add_argument("--people", type=int, default=5000)
    s.add_argument("--days", type=int, default=365)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--start", type=date.fromisoformat, help="first day (default 2025-01-01)")
    s.add_argument("--ending-today", action="store_true", help="start DAYS days ago, so the year ends today")
    s.add_argument("--out", help="feed file (default stdout)")
    s.add_argument("--truth", help="ground-truth JSON file")
    s.add_argument("--stream", action="store_true",
                   help="instead: an ADT update stream per person (A08 deltas, \"\" deletes, A08 after A03, a "
                        "second site, late messages, v2.8, look-alike test patients): gateway/simulate_stream.py")
    s.add_argument("--arrival-of", metavar="PATIENT_ID", help="print one ADT of a visit of this stored Patient now")
    s.add_argument("--site", default="HLA", help=f"site of --arrival-of ({', '.join(site_codes())})")
    s.add_argument("--trigger", default="A04", help="trigger of --arrival-of (A04, A03, A11…)")
    s.add_argument("--visit", help="visit number of --arrival-of (to discharge or cancel a visit)")


def run(command: str, args: argparse.Namespace, settings: Settings) -> int:
    if command == "simulate":
        return _simulate(args, settings)
    store = FhirStore(settings.data_dir / "fhir.sqlite")
    try:
        service = DefiSante(store, None, settings)
        return _candidates(service, args) if command == "candidates" else _outcomes(service, args)
    finally:
        store.close()


def _candidates(service: DefiSante, args: argparse.Namespace) -> int:
    chosen = None if args.exclusion is None else [x for x in args.exclusion.split(",") if x and x != "none"]
    found = service.candidates(cand.Query(args.window, args.threshold, args.top, args.date), chosen)
    if args.csv:
        sys.stdout.write(cand.csv_text(found.result, found.patients, found.nams))
        return 0
    res = found.result
    print(f"Défi Santé candidates: {res.total} with >= {args.threshold} ER visits between {res.window_start} "
          f"and {res.reference} (showing {len(res.candidates)}); {len(res.enrolled)} enrolled client(s) apart")
    print(f"{'rank':>4} {'visits':>6} {'excl':>4}  {'last visit':<16}  {'patient id':<32}  name / sites / diagnoses")
    for row in [*res.candidates, *res.enrolled]:
        patient = found.patients.get(row.person_id) or {}
        name: dict[str, Any] = next(iter(patient.get("name") or []), {})
        who = f"{name.get('family', '')}, {' '.join(name.get('given') or [])}".strip(", ")
        rank = str(row.rank) if row.rank else row.status
        diag = ", ".join(c.code for c in row.main_diagnoses())
        print(f"{rank:>4} {len(row.counted):>6} {sum(row.excluded.values()):>4}  {row.last_visit[:16]:<16}  "
              f"{row.person_id:<32}  {who} / {', '.join(row.sites)} / {diag}")
    return 0


def _outcomes(service: DefiSante, args: argparse.Namespace) -> int:
    lines, _as_of = service.outcomes(args.date)
    least = service.min_follow_up_days
    if args.csv:
        sys.stdout.write(outcomes.csv_text(lines, least))
        return 0
    print(f"{'patient id':<32} {'status':<6} {'enrolled':<20} {'days':>7} {'before':>6} {'since':>5} "
          f"{'/year':>6} {'hosp.d before':>13} {'since':>6}")
    for c in lines:
        annual = c.visits_since_annualised
        print(f"{c.patient_id:<32} {'active' if c.active else 'ended':<6} {c.enrolled[:19]:<20} "
              f"{c.follow_up_days:>7.1f} {c.visits_before:>6} {c.visits_since:>5} "
              f"{'' if annual is None else f'{annual:.1f}':>6} {c.hospital_days_before:>13.1f} "
              f"{c.hospital_days_since:>6.1f}{'' if c.followed else '  (suivi insuffisant)'}")
    s = outcomes.cohort_summary(lines, least)

    def shown(value: object, unit: str = "") -> str:
        return "n/a" if value is None else f"{value}{unit}"

    print(f"cohort: {s['clientsCompared']} of {s['clients']} client(s) followed >= {least} days; ER visits per "
          f"client-year: {shown(s['erVisitsPerClientYearBefore'])} the year before, "
          f"{shown(s['erVisitsPerClientYearSince'])} since; change {shown(s['erVisitsChangePercent'], ' %')}")
    for row in outcomes.first_clients(lines):
        print(f"the first {row['clients']} clients (a full year of follow-up): {row['erVisitsYearBefore']} ER "
              f"visits the year before, {row['erVisitsYearAfter']} the year after")
    return 0


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    if args.arrival_of:
        store = FhirStore(settings.data_dir / "fhir.sqlite")
        try:
            patient = read(store, "Patient", args.arrival_of)
            arrived = _arrival_of_visit(store, args.visit) if args.visit else None
        finally:
            store.close()
        if patient is None:
            raise GatewayError("no such Patient in the local store")
        try:
            raw = visit_message(patient, site=args.site, trigger=args.trigger, visit=args.visit, when=arrived)
        except ValueError as exc:
            raise GatewayError(str(exc)) from None
        _output(args.out).write(raw + b"\n")
        return 0
    if args.stream:
        from gateway.simulate_stream import stream

        out = _output(args.out)
        for sent in stream(people=args.people, seed=args.seed):
            out.write(sent.raw + b"\n")
        out.flush()
        return 0
    from gateway.simulate import simulate, write

    start = args.start or date(2025, 1, 1)
    if args.ending_today:
        start = datetime.now(UTC).date() - timedelta(days=args.days)
    try:
        sim = simulate(sites=args.sites, people=args.people, days=args.days, seed=args.seed,
                       start=datetime(start.year, start.month, start.day))
    except ValueError as exc:
        raise GatewayError(str(exc)) from None
    out = _output(args.out)
    try:
        write(sim, out, args.truth)
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    print(f"simulated {len(sim.messages)} messages, {len(sim.truth['frequent_nams'])} frequent users, "
          f"{len(sim.truth['pregnancy_nams'])} pregnancy-related repeaters", file=sys.stderr)
    return 0


def _arrival_of_visit(store: FhirStore, visit: str) -> datetime | None:
    """The stored arrival of the visit numbered ``visit`` (so a discharge or a cancel keeps it)."""
    _q, page = store.search("Encounter", [("identifier", visit)])
    for entry in page.entries:
        start = str(((entry.resource or {}).get("period") or {}).get("start") or "")
        try:
            return datetime.fromisoformat(start.replace("Z", "+00:00")) if len(start) > 10 else None
        except ValueError:
            return None
    return None


def _output(path: str | None) -> IO[bytes]:
    if not path or path == "-":
        return sys.stdout.buffer
    return open(path, "wb")  # closed by the caller
