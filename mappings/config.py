"""Start-up configuration of the mapping: sender profiles and identifier systems (both JSON files).

Sender profiles (``PIVOT_SENDER_PROFILES``)::

    {"default": {"charset": null, "timezone": "America/Montreal"},
     "senders": [{"application": "URGENCE", "facility": "CSSS-SOMMETS-HSA",
                  "charset": "8859/1", "timezone": "America/Montreal", "site": "HSA"}]}

A message matches the first sender whose ``application`` (MSH-3.1) and ``facility`` (MSH-4.1) both
match (``"*"`` or an absent key matches anything); exact pairs are tried before wildcards. Without a
match the default profile applies. ``site`` defaults to MSH-4.1. ``relax`` (a list, default: the
default profile's) names required-structure items this sender may omit, e.g. ``["EVN", "A31:PV1"]``;
only what codemaps/required-structure.json calls ``relaxable`` (mappings/structure.py).

Identifier systems (``PIVOT_IDENTIFIER_SYSTEMS``): assigning authority (CX-4.1) -> system URI, or
an object ``{"system": uri, "visit_system": uri}``::

    {"HSA": "https://sommets.example.org/fhir/NamingSystem/hsa-mrn",
     "HLA": {"system": "urn:oid:2.16.124.10.101.1.60.100", "visit_system": "urn:oid:2.16.124.10.101.1.60.101"}}

Unknown authorities get ``urn:pivot:id:<authority>`` (visits ``urn:pivot:visit:<authority>``);
RAMQ and CMQ have built-in systems (codemaps/identity.json) that the file may override.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.errors import ConfigError
from gateway.hl7v2.charset import codec_for
from mappings.codemaps import load_json
from mappings.structure import check_relax

if TYPE_CHECKING:
    from gateway.hl7v2.tokenizer import Message

IDENTITY: dict[str, Any] = load_json("identity.json")


def uri_part(text: str) -> str:
    """``text`` made safe inside a URI (percent-encoding of spaces and reserved characters)."""
    return quote(text.strip(), safe="-._~")


@dataclass(frozen=True, slots=True)
class Profile:
    """How to read one sender: assumed charset, time zone of offset-less timestamps, site code."""

    charset: str | None = None
    timezone: str = "America/Montreal"
    site: str = ""
    name: str = "default"
    relax: frozenset[str] = frozenset()  # required-structure items waived for this sender (mappings/structure.py)

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.timezone)


_ZONES: dict[str, ZoneInfo] = {}


def _zone(name: str) -> ZoneInfo:
    zone = _ZONES.get(name)
    if zone is None:
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"unknown time zone {name!r} in a sender profile") from None
        _ZONES[name] = zone
    return zone


def _profile(raw: Any, base: Profile, where: str) -> Profile:
    if not isinstance(raw, dict):
        raise ConfigError(f"sender profile {where}: not a JSON object")
    charset = raw.get("charset", base.charset)
    timezone = raw.get("timezone", base.timezone)
    site = raw.get("site", "")
    if charset is not None and (not isinstance(charset, str) or codec_for(charset) is None):
        raise ConfigError(f"sender profile {where}: unknown charset")
    if not isinstance(timezone, str) or not isinstance(site, str):
        raise ConfigError(f"sender profile {where}: timezone and site must be strings")
    _zone(timezone)
    relax = raw.get("relax")
    if relax is not None and not (isinstance(relax, list) and all(isinstance(r, str) for r in relax)):
        raise ConfigError(f"sender profile {where}: relax must be a list of strings")
    relaxed = check_relax(relax, where) if relax is not None else base.relax
    return Profile(charset=charset or None, timezone=timezone, site=site, name=where, relax=relaxed)


@dataclass(frozen=True, slots=True)
class _Rule:
    application: str
    facility: str
    profile: Profile


@dataclass(frozen=True, slots=True)
class Profiles:
    """Per-sender profiles, matched on MSH-3.1 / MSH-4.1."""

    default: Profile
    rules: tuple[_Rule, ...] = ()
    _exact: dict[tuple[str, str], Profile] = field(default_factory=dict)
    _matched: dict[tuple[str, str], Profile] = field(default_factory=dict, compare=False, repr=False)  # bounded

    @classmethod
    def load(cls, path: Path | None, default_timezone: str) -> Profiles:
        """Read the profiles file (None: only the default profile). ConfigError when invalid."""
        base = _profile({"timezone": default_timezone}, Profile(), "default")
        if path is None:
            return cls(base)
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"sender profiles file unreadable: {type(exc).__name__}") from None
        if not isinstance(data, dict):
            raise ConfigError("sender profiles file: not a JSON object")
        default = _profile(data.get("default", {}), base, "default")
        senders = data.get("senders", [])
        if not isinstance(senders, list):
            raise ConfigError("sender profiles file: 'senders' must be a list")
        rules = []
        for i, raw in enumerate(senders):
            where = str(raw.get("name", f"senders[{i}]")) if isinstance(raw, dict) else f"senders[{i}]"
            prof = _profile(raw, default, where)
            app, fac = str(raw.get("application", "*")), str(raw.get("facility", "*"))
            rules.append(_Rule(app, fac, prof))
        exact = {(r.application, r.facility): r.profile for r in rules if "*" not in (r.application, r.facility)}
        wild = tuple(r for r in rules if "*" in (r.application, r.facility))
        return cls(default, wild, exact)

    def for_message(self, msg: Message) -> Profile:
        """The profile of ``msg``'s sender (only MSH is read); ``site`` defaults to MSH-4.1."""
        key = (msg.sending_application, msg.sending_facility)
        prof = self._matched.get(key)
        if prof is None:
            prof = self._match(*key)
            if len(self._matched) >= 1024:
                self._matched.clear()
            self._matched[key] = prof
        return prof

    def _match(self, app: str, fac: str) -> Profile:
        prof = self._exact.get((app, fac))
        if prof is None:
            prof = next((r.profile for r in self.rules if r.application in ("*", app) and r.facility in ("*", fac)),
                        self.default)
        return prof if prof.site else replace(prof, site=fac)


@dataclass(frozen=True, slots=True)
class IdentifierSystems:
    """Assigning authority -> identifier system URI (patients) and visit-number system."""

    systems: dict[str, str] = field(default_factory=dict)
    visit_systems: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None) -> IdentifierSystems:
        systems = dict(IDENTITY["default_systems"])
        visits: dict[str, str] = {}
        if path is not None:
            try:
                data = json.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"identifier systems file unreadable: {type(exc).__name__}") from None
            if not isinstance(data, dict):
                raise ConfigError("identifier systems file: not a JSON object")
            for authority, value in data.items():
                if isinstance(value, str):
                    systems[authority] = value
                elif isinstance(value, dict) and isinstance(value.get("system", ""), str):
                    if value.get("system"):
                        systems[authority] = value["system"]
                    if isinstance(value.get("visit_system"), str):
                        visits[authority] = value["visit_system"]
                else:
                    raise ConfigError(f"identifier systems file: bad entry for authority {authority!r}")
        for uri in (*systems.values(), *visits.values()):
            if not uri or any(c.isspace() for c in uri) or ":" not in uri:
                raise ConfigError("identifier systems file: every system must be an absolute URI")
        return cls(systems, visits)

    def system(self, authority: str) -> str:
        """System of identifiers assigned by ``authority`` (never the bare authority)."""
        known = self.systems.get(authority)
        return known if known is not None else IDENTITY["default_prefix"] + uri_part(authority or "unknown")

    def visit_system(self, authority: str) -> str:
        known = self.visit_systems.get(authority)
        return known if known is not None else IDENTITY["visit_prefix"] + uri_part(authority or "unknown")
