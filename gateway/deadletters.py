"""Dead letters: list them and replay them through the intake.

A dead letter is a record of the ``deadletter`` topic: the raw bytes and headers giving the stage,
the error codes and a reason without health data. Its id is ``partition:offset``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from connectors.base import Origin, Reply
from gateway.errors import GatewayError
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


def list_deadletters(gateway: Gateway) -> list[DeadLetter]:
    out = []
    for rec in gateway.log.read_all(gateway.settings.topic(DEADLETTER)):
        h = rec.headers
        out.append(DeadLetter(id=f"{rec.partition}:{rec.offset}", at=h.get("at", ""), stage=h.get("stage", ""),
                              code=h.get("code", ""), hl7_code=h.get("hl7_code", ""),
                              sender=h.get("sender", ""), control_id=h.get("msh10", ""),
                              size=len(rec.value), reason=h.get("reason", ""), raw=rec.value))
    return out


def print_deadletters(items: list[DeadLetter]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Dead letters ({len(items)})")
    for col in ("id", "at", "stage", "code", "0357", "sender", "MSH-10", "bytes", "reason"):
        table.add_column(col)
    for d in items:
        table.add_row(d.id, d.at, d.stage, d.code, d.hl7_code, d.sender, d.control_id, str(d.size), d.reason)
    Console(width=200).print(table)


def replay(gateway: Gateway, ref: str) -> Reply:
    """Send one dead letter through the intake again (its duplicate entry is forgotten first)."""
    for item in list_deadletters(gateway):
        if item.id == ref:
            if item.control_id:
                gateway.dedupe.forget(item.sender, item.control_id)
            return gateway.intake.receive(item.raw, Origin("replay", f"deadletter:{ref}"))
    raise GatewayError(f"no dead letter with id {ref}")
