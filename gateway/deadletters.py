"""Dead letters: list them and replay them (through the intake, or to delivery for stage ``deliver``).

A dead letter is a record of the ``deadletter`` topic: the raw bytes and headers giving the stage,
the error codes and a reason without health data. Its id is ``partition:offset``. A ``deliver``
dead letter holds the refused transaction Bundle (JSON); replaying it appends it to ``fhir.Bundle``
again (same key: the patient id) for the delivery sink, instead of mapping the message again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console

from connectors.base import Origin, Reply
from gateway.envelope import fhir_envelope, now_iso
from gateway.errors import GatewayError, PublishError
from gateway.eventlog.base import OutRecord
from gateway.topics import DEADLETTER

if TYPE_CHECKING:
    from gateway.app import Gateway


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    at: str
    stage: str
    code: str
    hl7_code: str
    sender: str
    control_id: str
    size: int
    reason: str
    raw: bytes
    key: bytes | None = None


def list_deadletters(gateway: Gateway) -> list[DeadLetter]:
    out = []
    for rec in gateway.log.read_all(gateway.settings.topic(DEADLETTER)):
        h = rec.headers
        out.append(DeadLetter(id=f"{rec.partition}:{rec.offset}", at=h.get("at", ""), stage=h.get("stage", ""),
                              code=h.get("code", ""), hl7_code=h.get("hl7_code", ""),
                              sender=h.get("sender", ""), control_id=h.get("msh10", ""),
                              size=len(rec.value), reason=h.get("reason", ""), raw=rec.value, key=rec.key))
    return out


class _PipeConsole(Console):
    """rich exits 1 when stdout's reader goes away; `pivot deadletter list | head` is not an error, so
    the BrokenPipeError goes up to the command line, which exits 0 (gateway.cli)."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def print_deadletters(items: list[DeadLetter]) -> None:
    from rich.table import Table

    table = Table(title=f"Dead letters ({len(items)})")
    for col in ("id", "at", "stage", "code", "0357", "sender", "MSH-10", "bytes", "reason"):
        table.add_column(col)
    for d in items:
        table.add_row(d.id, d.at, d.stage, d.code, d.hl7_code, d.sender, d.control_id, str(d.size), d.reason)
    _PipeConsole(width=200).print(table)


def diagnostics(raw: bytes) -> list[str]:
    """hl7apy's strict reading of a refused message: positions and problems only, never values.

    Computed when someone looks (``pivot deadletter show``), not when the message is refused: it
    costs ~20 ms of CPU per message, which a flood of bad input would otherwise take from the ACKs
    of every other sender."""
    from gateway.hl7v2.diagnose import diagnose

    if len(raw) > 256 * 1024 or b"MSH" not in raw[:16]:
        return []
    return [f"{where}: {what}" for where, what in diagnose(raw.decode("latin-1"))[:20]]


def print_deadletter(item: DeadLetter) -> None:
    """One dead letter: its headers (no health data) and the strict diagnostics; never the raw bytes."""
    for label, value in (("id", item.id), ("at", item.at), ("stage", item.stage), ("code", item.code),
                         ("0357", item.hl7_code), ("sender", item.sender), ("MSH-10", item.control_id),
                         ("bytes", str(item.size)), ("reason", item.reason)):
        print(f"{label:<8}{value}")
    found = diagnostics(item.raw) if item.stage != "deliver" else []
    print("hl7apy (strict):" if found else "hl7apy (strict): nothing more to report")
    for line in found:
        print(f"  {line}")


# stages an operator's replay must not send through the intake again, and why
_NOT_REPLAYABLE = {
    # a replay carries no sender identity, so it would bypass the sender-authority check that refused it
    "forbidden": "the sender may not write that site's records; fix the sender's registration "
                 "(facilities, authorities) and have the sender resend",
    # the message was accepted (AA with a warning); replaying would apply it twice
    "warning": "the message was accepted with this warning; there is nothing to replay",
}


def replay(gateway: Gateway, ref: str) -> Reply:
    """Send one dead letter through the intake again (its duplicate entry is forgotten first).

    A ``deliver`` dead letter goes back to the ``fhir.Bundle`` topic instead (see module docstring).
    """
    for item in list_deadletters(gateway):
        if item.id == ref:
            refusal = _NOT_REPLAYABLE.get(item.stage)
            if refusal:
                raise GatewayError(f"dead letter {ref} (stage {item.stage}) is not replayed: {refusal}")
            if item.stage == "deliver":
                return _replay_bundle(gateway, item)
            if item.control_id:
                gateway.dedupe.forget(item.sender, item.control_id)
            return gateway.intake.receive(item.raw, Origin("replay", f"deadletter:{ref}"))
    raise GatewayError(f"no dead letter with id {ref}")


def _replay_bundle(gateway: Gateway, item: DeadLetter) -> Reply:
    """Re-append a refused transaction Bundle to ``fhir.Bundle`` in a fresh envelope (AA once durable)."""
    from gateway.delivery.bundle import BUNDLE_TOPIC, patient_key

    try:
        bundle = json.loads(item.raw)
    except ValueError:
        bundle = None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return Reply(code="AE", control_id=item.control_id, error="dead letter is not a FHIR Bundle")
    entries = bundle.get("entry") or []
    first = entries[0].get("resource", {}) if entries and isinstance(entries[0], dict) else {}
    site = str((first.get("meta") or {}).get("source", "")) if isinstance(first, dict) else ""
    value = fhir_envelope(bundle, site=site, control_id=item.control_id, sender=item.sender, received_at=now_iso())
    record = OutRecord(topic=gateway.settings.topic(BUNDLE_TOPIC), value=value,
                       key=item.key or patient_key(bundle),
                       headers={"msh10": item.control_id, "sender": item.sender, "replay_of": item.id})
    try:
        gateway.log.append(record)
    except PublishError as exc:
        return Reply(code="AR", control_id=item.control_id, error=exc.describe(), transient=True)
    return Reply(code="AA", control_id=item.control_id)
