"""A sender's site bounds what it may write: the assigning authorities whose identifiers it owns.

MSH-4 says who sends; the assigning authority (CX-4) of PID-3 says whose record a message writes.
A sender allowed only for facility A could otherwise send a PID-3 of facility B's authority and
rewrite B's Patient. So every patient and visit identifier of a message from a registered sender
must belong to an authority that sender owns:

    segment  fields                  identifiers
    PID      3, 2, 4                 the Patient (PID-2/PID-4: v2.3 alternate ids), pharmacy too
    MRG      1, 2, 4                 the retired Patient of a merge (A40/A34)
    PV1      19                      the Encounter (visit number)

What a sender owns (its registration: secrets-file entry, clients-file entry, certificate CN):

- every authority of each of its ``facilities`` (MSH-4.1 ids): the authorities the identifier-systems
  file (``PIVOT_IDENTIFIER_SYSTEMS``) assigns to that facility (``"facilities": [...]`` in an
  authority's object); and, by default — for authorities that file assigns to no facility — the
  authority named like the facility, the one named like its last hyphen-separated part
  (``CSSS-SOMMETS-HSA`` → ``HSA``), and the ``site`` of the sender profile matching the message
  (``PIVOT_SENDER_PROFILES``; the site is already what an identifier without CX-4 is written under);
- plus its registration's ``authorities`` list;
- everything with ``"*"`` in ``authorities``, or ``"*"`` in ``facilities`` and no ``authorities`` list.

Always writable: the NAM (a repetition the mapping makes a NAM: CX-5 ``JHN`` or a RAMQ authority,
see mappings/datatypes/identifiers.py) — one person across sites; and an identifier without an
authority (it is written under the sender's own site). An authority is compared by the identifier
system it maps to (the mapping's own ``hd_system``), so a namespace the sender owns cannot carry
another site's universal id (CX-4.2) past the check.

A refusal is a :class:`ForbiddenError` with ERR-3 ``204`` (unknown key identifier) located at the
field (``PID^1^3``): AR, dead letter at stage ``forbidden``, nothing written. Anonymous senders
(no registration) are not bounded here: see ``Security.authorize_sender``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, Location
from gateway.hl7v2.tokenizer import Message, Rep
from gateway.security.allowlist import ForbiddenError
from gateway.security.clients import Client
from gateway.settings import Settings
from mappings import IdentifierSystems, Profiles
from mappings.datatypes.identifiers import authority, hd_system, is_nam
from mappings.datatypes.primitives import value

# segment -> (field, visit number?) of the identifiers checked; a visit number is never a NAM
CHECKED_FIELDS: dict[str, tuple[tuple[int, bool], ...]] = {
    "PID": ((3, False), (2, False), (4, False)),
    "MRG": ((1, False), (2, False), (4, False)),
    "PV1": ((19, True),),
}
_UNIVERSAL_PREFIXES = ("urn:oid:", "urn:uuid:")
ANY = "*"


def assigned_facilities(path: Path | None) -> dict[str, frozenset[str]]:
    """Authority -> the MSH-4 facilities the identifier-systems file assigns it to (``facilities``)."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError("invalid setting PIVOT_IDENTIFIER_SYSTEMS: cannot read it as JSON") from None
    if not isinstance(data, dict):
        return {}  # the mapping's loader reports it
    out: dict[str, frozenset[str]] = {}
    for name, entry in data.items():
        facilities: Any = entry.get("facilities") if isinstance(entry, dict) else None
        if facilities is None:
            continue
        if not isinstance(facilities, list) or not all(isinstance(f, str) and f for f in facilities):
            raise ConfigError(f"invalid setting PIVOT_IDENTIFIER_SYSTEMS: facilities of authority {name!r} "
                              "must be a list of MSH-4 facility ids")
        out[str(name)] = frozenset(facilities)
    return out


@dataclass(frozen=True, slots=True)
class SiteAuthorities:
    """``check(client, msg)`` raises ForbiddenError (204) when ``msg`` writes an authority ``client`` does not own."""

    systems: IdentifierSystems
    profiles: Profiles
    assigned: dict[str, frozenset[str]]  # authority -> facilities, from the identifier-systems file

    @classmethod
    def load(cls, settings: Settings) -> SiteAuthorities:
        return cls(IdentifierSystems.load(settings.identifier_systems),
                   Profiles.load(settings.sender_profiles, settings.default_timezone),
                   assigned_facilities(settings.identifier_systems))

    def owned(self, client: Client, msg: Message) -> frozenset[str] | None:
        """The authorities ``client`` may write in ``msg``; None = any."""
        if ANY in client.authorities or (ANY in client.facilities and not client.authorities):
            return None
        named = {*(a for f in client.facilities for a in facility_authorities(f)),
                 self.profiles.for_message(msg).site} - {ANY}
        own = {a for a in named if a not in self.assigned}
        own.update(a for a, facilities in self.assigned.items() if facilities & client.facilities)
        return frozenset(own | client.authorities)

    def check(self, client: Client, msg: Message) -> None:
        owned = self.owned(client, msg)
        if owned is None:
            return
        site = self.profiles.for_message(msg).site
        patient, visit = self._systems(owned, visit=False), self._systems(owned, visit=True)
        counts: dict[str, int] = {}
        for seg in msg.segments:
            fields = CHECKED_FIELDS.get(seg.id)
            if fields is None:
                continue
            counts[seg.id] = counts.get(seg.id, 0) + 1
            for field, is_visit in fields:
                allowed = visit if is_visit else patient
                for rep in seg.reps(field):
                    if _bounded(rep, is_visit) and hd_system(rep, 4, self.systems, site, visit=is_visit) not in allowed:
                        raise ForbiddenError("identifier of an assigning authority the sender does not own",
                                             location=Location(seg.id, counts[seg.id], field), hl7_code="204")

    def _systems(self, authorities: frozenset[str], *, visit: bool) -> frozenset[str]:
        """The identifier systems of ``authorities``: as configured (or minted), and as universal ids."""
        out: set[str] = set()
        for name in authorities:
            out.add(self.systems.visit_system(name) if visit else self.systems.system(name))
            out.update(prefix + name for prefix in _UNIVERSAL_PREFIXES)
            if ":" in name:
                out.add(name)  # a URI given as the authority (HD-3 URI)
        return frozenset(out)


def facility_authorities(facility: str) -> tuple[str, ...]:
    """The authorities a facility owns by default: its own id and, for ``CSSS-SOMMETS-HSA``, ``HSA``
    (the last hyphen-separated part, how Québec facility ids usually end with the site code)."""
    last = facility.rsplit("-", 1)[-1]
    return (facility, last) if last and last != facility else (facility,)


def _bounded(rep: Rep, visit: bool) -> bool:
    """Whether this repetition writes a site's identifier: it has a value, an authority, and is no NAM."""
    if not value(rep.get(1)) or not authority(rep):
        return False
    return visit or not is_nam(rep)
