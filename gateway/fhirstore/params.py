"""Search parameters as data: the one table that indexing, search and the CapabilityStatement read.

Each :class:`SearchParam` names an R4 search parameter of one resource type, its type and the
element paths (dotted, from the resource root, lists flattened on the way) whose values are
extracted into the index tables on every write. Reference parameters may restrict the indexed
targets (``patient`` = ``subject`` where the target is a Patient). ``_id`` and ``_lastUpdated``
apply to every supported type and are answered from the resource table itself.

Supported resource types = the types below (those the gateway produces, plus the Défi Santé
program's own resources) ∪ :data:`gateway.topics.FHIR_TYPES`; any other type is refused with 405.
Adding a search parameter or a type is one line here: the index, the search and the
CapabilityStatement follow. Existing rows are indexed on write, so a parameter added later applies
to resources written after it (``FhirStore.reindex()`` rebuilds the index for the others).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.topics import FHIR_TYPES

ParamType = Literal["token", "reference", "date", "string"]


@dataclass(frozen=True, slots=True)
class SearchParam:
    """One search parameter: ``name`` on ``paths`` (dotted element paths) of a given ``type``."""

    name: str
    type: ParamType
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()  # reference parameters: target types indexed (empty = any)
    definition: str = ""  # canonical SearchParameter URL, when it is a base one we are sure of

    @property
    def documentation(self) -> str:
        where = " | ".join(self.paths)
        if self.targets:
            where += f" (targets: {', '.join(self.targets)})"
        return where


def _p(name: str, ptype: ParamType, *paths: str, targets: tuple[str, ...] = ()) -> SearchParam:
    return SearchParam(name, ptype, paths, targets)


_PAT = ("Patient",)

# Parameters answered from the resource table (every supported type).
COMMON_PARAMS: tuple[SearchParam, ...] = (
    SearchParam("_id", "token", ("id",), definition="http://hl7.org/fhir/SearchParameter/Resource-id"),
    SearchParam("_lastUpdated", "date", ("meta.lastUpdated",),
                definition="http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"),
)

_BY_TYPE: dict[str, tuple[SearchParam, ...]] = {
    "Patient": (
        _p("identifier", "token", "identifier"),
        _p("name", "string", "name"),
        _p("family", "string", "name.family"),
        _p("given", "string", "name.given"),
        _p("birthdate", "date", "birthDate"),
        _p("gender", "token", "gender"),
        _p("active", "token", "active"),
        _p("organization", "reference", "managingOrganization"),
        _p("general-practitioner", "reference", "generalPractitioner"),
    ),
    "Encounter": (
        _p("identifier", "token", "identifier"),
        _p("patient", "reference", "subject", targets=_PAT),
        _p("subject", "reference", "subject"),
        _p("class", "token", "class"),
        _p("status", "token", "status"),
        _p("date", "date", "period"),
        _p("type", "token", "type"),
        _p("practitioner", "reference", "participant.individual", targets=("Practitioner",)),
        _p("participant", "reference", "participant.individual"),
        _p("location", "reference", "location.location"),
        _p("service-provider", "reference", "serviceProvider"),
    ),
    "Practitioner": (
        _p("identifier", "token", "identifier"),
        _p("name", "string", "name"),
        _p("family", "string", "name.family"),
        _p("given", "string", "name.given"),
    ),
    "PractitionerRole": (
        _p("identifier", "token", "identifier"),
        _p("practitioner", "reference", "practitioner"),
        _p("organization", "reference", "organization"),
        _p("role", "token", "code"),
    ),
    "Organization": (
        _p("identifier", "token", "identifier"),
        _p("name", "string", "name", "alias"),
        _p("type", "token", "type"),
    ),
    "RelatedPerson": (
        _p("identifier", "token", "identifier"),
        _p("patient", "reference", "patient"),
        _p("name", "string", "name"),
        _p("relationship", "token", "relationship"),
    ),
    "Condition": (
        _p("identifier", "token", "identifier"),
        _p("patient", "reference", "subject", targets=_PAT),
        _p("subject", "reference", "subject"),
        _p("encounter", "reference", "encounter"),
        _p("code", "token", "code"),
        _p("category", "token", "category"),
        _p("clinical-status", "token", "clinicalStatus"),
        _p("onset-date", "date", "onsetDateTime", "onsetPeriod"),
        _p("recorded-date", "date", "recordedDate"),
    ),
    "Location": (
        _p("identifier", "token", "identifier"),
        _p("name", "string", "name", "alias"),
        _p("status", "token", "status"),
        _p("organization", "reference", "managingOrganization"),
        _p("partof", "reference", "partOf"),
    ),
    "Provenance": (
        _p("target", "reference", "target"),
        _p("patient", "reference", "target", targets=_PAT),
        _p("recorded", "date", "recorded"),
        _p("agent", "reference", "agent.who"),
        _p("entity", "reference", "entity.what"),
    ),
    # The Défi Santé program's own resources (roster flag, service plan, care team, consent,
    # pharmacy profile updates).
    "Flag": (
        _p("identifier", "token", "identifier"),
        _p("patient", "reference", "subject", targets=_PAT),
        _p("subject", "reference", "subject"),
        _p("status", "token", "status"),
        _p("date", "date", "period"),
        _p("encounter", "reference", "encounter"),
        _p("code", "token", "code"),
    ),
    "CarePlan": (
        _p("identifier", "token", "identifier"),
        _p("patient", "reference", "subject", targets=_PAT),
        _p("subject", "reference", "subject"),
        _p("status", "token", "status"),
        _p("date", "date", "period"),
        _p("category", "token", "category"),
        _p("care-team", "reference", "careTeam"),
    ),
    "CareTeam": (
        _p("identifier", "token", "identifier"),
        _p("patient", "reference", "subject", targets=_PAT),
        _p("subject", "reference", "subject"),
        _p("status", "token", "status"),
        _p("date", "date", "period"),
        _p("participant", "reference", "participant.member"),
    ),
    "Consent": (
        _p("identifier", "token", "identifier"),
        _p("patient", "reference", "patient"),
        _p("status", "token", "status"),
        _p("date", "date", "dateTime"),
        _p("category", "token", "category"),
    ),
    "MedicationRequest": (
        _p("identifier", "token", "identifier"),
        _p("patient", "reference", "subject", targets=_PAT),
        _p("subject", "reference", "subject"),
        _p("status", "token", "status"),
        _p("code", "token", "medicationCodeableConcept"),
        _p("encounter", "reference", "encounter"),
        _p("authoredon", "date", "authoredOn"),
    ),
    "MedicationDispense": (
        _p("identifier", "token", "identifier"),
        _p("patient", "reference", "subject", targets=_PAT),
        _p("subject", "reference", "subject"),
        _p("status", "token", "status"),
        _p("code", "token", "medicationCodeableConcept"),
        _p("whenhandedover", "date", "whenHandedOver"),
        _p("prescription", "reference", "authorizingPrescription"),
    ),
    # Alerts and messages to the care team (Défi Santé ER-arrival alerts are Communications).
    "Communication": (
        _p("identifier", "token", "identifier"),
        _p("patient", "reference", "subject", targets=_PAT),
        _p("subject", "reference", "subject"),
        _p("status", "token", "status"),
        _p("category", "token", "category"),
        _p("encounter", "reference", "encounter"),
        _p("recipient", "reference", "recipient"),
        _p("sender", "reference", "sender"),
        _p("sent", "date", "sent"),
    ),
    "MedicationStatement": (
        _p("identifier", "token", "identifier"),
        _p("patient", "reference", "subject", targets=_PAT),
        _p("subject", "reference", "subject"),
        _p("status", "token", "status"),
        _p("category", "token", "category"),
        _p("code", "token", "medicationCodeableConcept"),
        _p("effective", "date", "effectivePeriod"),
        _p("source", "reference", "informationSource"),
    ),
    "MedicationAdministration": (
        _p("identifier", "token", "identifier"),
        _p("patient", "reference", "subject", targets=_PAT),
        _p("subject", "reference", "subject"),
        _p("status", "token", "status"),
        _p("code", "token", "medicationCodeableConcept"),
        _p("effective-time", "date", "effectiveDateTime", "effectivePeriod"),
        _p("performer", "reference", "performer.actor"),
        _p("request", "reference", "request"),
    ),
    # Goals of a Défi Santé service plan (CarePlan.goal).
    "Goal": (
        _p("identifier", "token", "identifier"),
        _p("patient", "reference", "subject", targets=_PAT),
        _p("subject", "reference", "subject"),
        _p("lifecycle-status", "token", "lifecycleStatus"),
        _p("category", "token", "category"),
        _p("start-date", "date", "startDate"),
    ),
    # R4 Subscriptions managed through /fhir (gateway.subscriptions delivers them).
    "Subscription": (
        _p("status", "token", "status"),
        _p("type", "token", "channel.type"),
        _p("url", "token", "channel.endpoint"),
        _p("payload", "token", "channel.payload"),
        _p("criteria", "string", "criteria"),
    ),
}

RESOURCE_TYPES: tuple[str, ...] = tuple(sorted(set(_BY_TYPE) | set(FHIR_TYPES)))

SEARCH_PARAMS: dict[str, dict[str, SearchParam]] = {
    rtype: {p.name: p for p in (*COMMON_PARAMS, *_BY_TYPE.get(rtype, ()))} for rtype in RESOURCE_TYPES
}

# Result parameters the search understands (not search parameters; not in searchParam lists).
RESULT_PARAMS: frozenset[str] = frozenset(
    {"_count", "_page", "_include", "_sort", "_summary", "_total", "_format", "_pretty"}
)
HISTORY_PARAMS: frozenset[str] = frozenset({"_count", "_page", "_since", "_format", "_pretty"})
SORTS: tuple[str, ...] = ("_lastUpdated", "-_lastUpdated")


def supported(rtype: str) -> bool:
    """True when the store accepts resources of type ``rtype``."""
    return rtype in SEARCH_PARAMS


def indexed_params(rtype: str) -> tuple[SearchParam, ...]:
    """The parameters of ``rtype`` extracted into the index tables (all but the common ones)."""
    return _BY_TYPE.get(rtype, ())


def include_params(rtype: str) -> tuple[SearchParam, ...]:
    """Reference parameters usable in ``_include=rtype:param``."""
    return tuple(p for p in indexed_params(rtype) if p.type == "reference")
