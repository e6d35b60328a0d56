"""Builders of the identity tests' HL7v2 ADT messages (fictitious people), and their mapping.

No tests here: ``adt(...)`` writes one message with the identifiers, demographics, visit and merge
a test needs; ``mapped(raw)`` maps it like the gateway does (default profiles and systems).
"""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.hl7v2.tokenizer import parse
from mappings import IdentifierSystems, MapContext, MapResult, Profiles, map_message

SITES = {"HSA": "CSSS-SOMMETS-HSA", "HLA": "CSSS-ARGENTEUIL-HLA", "HSJ": "CSSS-STJEROME-HSJ"}
PROFILES = Profiles.load(None, "America/Montreal")
SYSTEMS = IdentifierSystems.load(None)
NAM_SYSTEM = "https://fhir.infoway-inforoute.ca/NamingSystem/ca-qc-patient-healthcare-id"


def mrn_system(site: str) -> str:
    return f"urn:pivot:id:{site}"


def adt(trigger: str, *, site: str, mrn: str, control_id: str, when: str, nam: str = "", family: str = "Tremblay",
        given: str = "Jérôme", birth: str = "19400101", sex: str = "M", visit: str = "", klass: str = "E",
        location: str = "URG^CIV01^1", prior: str = "", start: str = "", end: str = "", disposition: str = "",
        mrg: str = "", mrg_nam: str = "", extra_pid3: str = "") -> bytes:
    """One ADT message of ``site`` (HSA, HLA, HSJ); ``when`` = MSH-7 and EVN-2 (YYYYMMDDHHMM)."""
    facility = SITES[site]
    pid3 = f"{mrn}^^^{site}^MR" + (f"~{nam}^^^RAMQ^JHN" if nam else "") + (f"~{extra_pid3}" if extra_pid3 else "")
    segments = [
        f"MSH|^~\\&|URGENCE|{facility}|PIVOT|CISSS-LAURENTIDES|{when}||ADT^{trigger}|{control_id}|P|2.5.1"
        "||||||UNICODE UTF-8",
        f"EVN|{trigger}|{when}",
        f"PID|1||{pid3}||{family}^{given}^^^^^L||{birth}|{sex}",
    ]
    if mrg or mrg_nam:
        reps = [f"{mrg}^^^{site}^MR"] if mrg else []
        reps += [f"{mrg_nam}^^^RAMQ^JHN"] if mrg_nam else []
        segments.append("MRG|" + "~".join(reps))
    if visit or trigger not in ("A40", "A34"):  # A28/A31 too: ADT_A05 requires PV1 (required-structure.json)
        pv1 = [""] * 46
        pv1[0], pv1[1], pv1[2] = "PV1", "1", klass
        pv1[3] = f"{location}^{site}" if location else ""
        pv1[6] = f"{prior}^{site}" if prior else ""
        pv1[19] = f"{visit}^^^{site}^VN" if visit else ""
        pv1[36] = disposition
        pv1[44], pv1[45] = start, end
        segments.append("|".join(pv1).rstrip("|"))
    return ("\r".join(segments) + "\r").encode("utf-8")


def mapped(raw: bytes) -> MapResult:
    """Parse and map one message like the intake does."""
    msg = parse(raw, None)
    return map_message(msg, MapContext(PROFILES.for_message(msg), SYSTEMS, datetime(2030, 1, 1, tzinfo=UTC)))
