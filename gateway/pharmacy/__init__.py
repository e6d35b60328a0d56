"""Community pharmacies (issue #5): the medication profile, the care team and the alerts.

    config.py      the policy (mappings/pharmacy/codemaps/profile-rules.json, atc-classes.json)
    profile.py     dispenses + orders + profile messages -> the state of each drug (pure)
    statements.py  one MedicationStatement per person and drug
    careteam.py    the dispensing pharmacy and pharmacist join an enrolled client's CareTeam
    alerts.py      high-risk class starts, active-drug threshold, one class from several pharmacies
    rules.py       PharmacyRules.on_mapped: the mapping worker's hook (read, evaluate, write, publish);
                   PharmacyRules.expire: re-evaluate supplies that ran out (periodic)
    samples.py     a fictitious RDS^O13 for demos (python -m gateway.pharmacy.samples)

The mapping itself (HL7v2 -> FHIR) is in mappings/pharmacy.
"""

from gateway.pharmacy.rules import PharmacyRules

__all__ = ["PharmacyRules"]
