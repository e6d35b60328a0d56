"""``pivot identity``: possible duplicates for records staff, and rebuilding the identity index.

    pivot identity duplicates [--all] [--json]   possible duplicates (ids and sites only, no names)
    pivot identity rebuild                       rebuild the index from the hl7v2.in log (gateway stopped)

Wired from gateway/cli.py through :func:`add_parser` and :func:`run`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.eventlog.base import read_in_order
from gateway.pipeline import Pipeline, received
from gateway.topics import HL7V2_BULK, HL7V2_IN
from mappings import MapResult

if TYPE_CHECKING:
    from gateway.app import Gateway


def add_parser(subparsers: Any) -> None:
    """Add ``identity`` and its actions to the ``pivot`` sub-command parsers."""
    ident = subparsers.add_parser("identity", help="one patient across sites: possible duplicates, index rebuild")
    actions = ident.add_subparsers(dest="identity_action", required=True)
    dup = actions.add_parser("duplicates", help="list possible duplicates (same name, birth date and sex, "
                                                "not both with a NAM): never merged automatically")
    dup.add_argument("--all", action="store_true", help="include Flags already resolved (merged, linked, disproved)")
    dup.add_argument("--json", action="store_true", help="one JSON object per line")
    actions.add_parser("rebuild", help="rebuild the identity index by resolving the hl7v2.in log again "
                                       "(stop the gateway first)")


def run(args: argparse.Namespace, gateway: Gateway) -> int:
    """Run ``pivot identity <action>``; returns the exit status."""
    if args.identity_action == "duplicates":
        return _duplicates(gateway, include_resolved=args.all, as_json=args.json)
    if args.identity_action == "rebuild":
        resolved, refused = gateway.identity.rebuild(_mapped_log(gateway))
        print(f"identity index rebuilt: {resolved} messages resolved, {refused} refused, "
              f"{gateway.identity.index.active_persons()} persons")
        return 0
    return 2


def _duplicates(gateway: Gateway, *, include_resolved: bool, as_json: bool) -> int:
    found = gateway.identity.duplicates(include_resolved=include_resolved)
    if as_json:
        for dup in found:
            print(json.dumps(asdict(dup)))
        return 0
    if not found:
        print("no possible duplicates")
        return 0
    print(f"{'flag':<32}  {'status':<8}  {'record':<32}  {'look-alike':<32}  since / sites (A | B)")
    for dup in found:
        status = "open" if dup.active else "resolved"
        sites = f"{_sites(dup.sites_a, dup.nam_a)} | {_sites(dup.sites_b, dup.nam_b)}"
        print(f"{dup.flag_id:<32}  {status:<8}  {dup.patient_a:<32}  {dup.patient_b:<32}  {dup.since}  {sites}")
    return 0


def _sites(systems: tuple[str, ...], nam: bool) -> str:
    return ",".join(systems) + (" +NAM" if nam else "")


def _mapped_log(gateway: Gateway) -> Iterator[MapResult | GatewayError]:
    """Every hl7v2.in and hl7v2.bulk record through the pipeline spine as the mapping worker takes it,
    in the order they were appended (as the intakes resolved them), stopped before identity: the
    resolver's rebuild applies each result to the emptied index."""
    pipeline = Pipeline(gateway.profiles, gateway.systems, identity=None)
    topics = [gateway.settings.topic(HL7V2_IN), gateway.settings.topic(HL7V2_BULK)]
    for rec in read_in_order(gateway.log, topics):
        outcome = pipeline.run(rec.value, received(rec.headers.get("received_at", "")))
        if outcome.error is not None:
            yield outcome.error
        elif outcome.result is not None:
            yield outcome.result
