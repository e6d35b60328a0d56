"""Défi Santé (issue #4): find the frequent ER users, enroll them, alert their team, measure.

    codes.py        canonical URLs, our codes, deterministic ids of the program's resources
    config.py       mappings/defisante/*.json: exclusion rules and the alert policy (checked at start-up)
    register.py     the ER-visit register (every ER visit per person, across sites) read from the store
    candidates.py   $defi-sante-candidates: ranking, exclusions, the searchset Bundle and CSV
    enrollment.py   $defi-sante-enroll / $defi-sante-disenroll: Parameters → Flag, Goal, CarePlan,
                    CareTeam, Consent
    roster.py       the enrolled clients and their teams, read from the shared register (else the store)
    shared.py       which writes reach the shared register (gateway/eventlog/state/register.py)
    publish.py      program writes: local store at once + fhir.<Type> + fhir.Bundle records
    alerts.py       DefiSanteRules.on_mapped: ER arrival / cancel / discharge Communications + events
    outcomes.py     $defi-sante-outcomes: ER visits and hospital days before / since enrollment
    service.py      DefiSante: the operations above over one store and log (HTTP and CLI call it)
    conformance.py  our CodeSystem, StructureDefinitions, OperationDefinitions (schemas/defisante/)
    routes.py       the FHIR operations under /fhir
    commands.py     pivot candidates / outcomes / simulate
    arrival.py      ADT of a visit of a stored Patient (README walkthrough, benchmark, tests)
"""

from gateway.defisante.alerts import DefiSanteRules

__all__ = ["DefiSanteRules"]
