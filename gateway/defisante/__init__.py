"""Défi Santé program rules (issue #4), run by the mapping worker after each mapped message.

``DefiSanteRules.on_mapped(result, received_at)`` returns extra records to publish with the
message's own (alerts, Communications). This first version raises nothing.
"""

from __future__ import annotations

from gateway.eventlog.base import OutRecord
from mappings import MapResult


class DefiSanteRules:
    """Program rules hook (no rule yet)."""

    def on_mapped(self, result: MapResult, received_at: str) -> list[OutRecord]:
        return []

    def close(self) -> None:
        return None
