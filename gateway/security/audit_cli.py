"""``pivot audit``: who accessed or was told about a patient's data (the audit trail under PIVOT_DATA_DIR).

    pivot audit --patient ID [--since DATE] [--json]

One line per AuditEvent (recorded, outcome, interaction, client, address, what), oldest first; what
the gateway disclosed on its own (``alert``, ``notification``: client ``pivot``) also names the
recipients (``to=``); ``--json`` prints a FHIR searchset Bundle of the AuditEvents instead. ``ID``
is a Patient logical id (``abc`` or ``Patient/abc``); ``DATE`` is ISO (``2024-05-01`` or a full
timestamp, UTC). Reads the database directly (read-only), so it works while ``pivot serve`` runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date, datetime
from typing import Any, TextIO

from gateway.security.audit_disclosure import EXPORT
from gateway.security.audit_trail import query_audit
from gateway.settings import Settings


def _since(text: str) -> str:
    """Validate an ISO date or timestamp; the result compares as text with ``recorded``."""
    if not text:
        return ""  # the default (argparse runs it through this function too): since the beginning
    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
        return datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()[:23]
    except ValueError:
        raise argparse.ArgumentTypeError("use an ISO date such as 2024-05-01") from None


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``audit`` to the subcommands of ``pivot`` (``sub`` = ``add_subparsers()``)."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "audit", help="list the AuditEvents of a patient (who accessed what, when, from where; alerts, notifications)")
    parser.add_argument("--patient", default="", help="Patient logical id (abc or Patient/abc); empty = all")
    parser.add_argument("--since", type=_since, default="", help="ISO date or timestamp (UTC), e.g. 2024-05-01")
    parser.add_argument("--json", action="store_true", help="print a FHIR Bundle of AuditEvents")
    return parser


def _line(event: dict[str, Any]) -> str:
    agent = event.get("agent", [{}])[0]
    client = agent.get("who", {}).get("display", "")
    address = agent.get("network", {}).get("address", "")
    what = [e["what"]["reference"] for e in event.get("entity", []) if "what" in e]
    queried = any(e.get("role", {}).get("code") == "24" for e in event.get("entity", []))
    outcome = {"0": "success", "4": "denied/failed", "8": "error"}.get(event.get("outcome", ""), "?")
    to = ""
    if event.get("type", {}).get("code") == EXPORT:
        whos = [a.get("who", {}) for a in event.get("agent", [])[1:]]
        to = " to=" + ",".join(str(w.get("reference") or w.get("display") or "?") for w in whos)
    return (f"{event.get('recorded', '')}  {outcome:<13} {event['subtype'][0]['code']:<14} client={client} "
            f"from={address or '-'}{to} {' '.join(what)}{' (query)' if queried else ''}")


def run(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Print the matching AuditEvents; 0 when the trail could be read (even if empty), else 1."""
    path = settings.data_dir / "audit.sqlite"
    if not path.exists():
        print(f"pivot: no audit trail in {settings.data_dir}", file=sys.stderr)
        return 1
    events = query_audit(path, patient=args.patient, since=args.since)
    if args.json:
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(events),
                  "entry": [{"resource": e} for e in events]}
        out.write(json.dumps(bundle, ensure_ascii=False, indent=1) + "\n")
        return 0
    for event in events:
        out.write(_line(event) + "\n")
    if not events:
        out.write("no AuditEvent matches\n")
    return 0
