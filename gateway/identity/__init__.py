"""One person across sites: identity resolution between mapping and publication (issue #3).

``IdentityResolver.resolve(result)`` runs on every mapped message, in the intake (its outcome
decides the ACK) and in the mapping worker (what it returns is published). This first version
passes results through unchanged: a Patient's id is derived from its NAM when the message carries
one, else from its site MRN (see mappings/README.md).
"""

from __future__ import annotations

from pathlib import Path

from mappings import MapResult


class IdentityResolver:
    """Rewrites a mapped message so that one person is one Patient (pass-through for now).

    ``data_dir``: where its index lives (None: in memory, for tests).
    """

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = data_dir

    def resolve(self, result: MapResult) -> MapResult:
        return result

    def close(self) -> None:
        return None
