"""ADT messages for a person the store knows: the demo's and the benchmark's "ER arrival at another site".

``visit_message(patient, site=…, trigger="A04")`` builds an ADT (A04 ER registration, A11 cancel,
A03 discharge…) of one visit for a stored Patient: its NAM (and name, birth date, sex, so the
Patient is rewritten with the same demographics), a site MRN derived from the Patient id, a visit
number, arrival (PV1-44) at ``when`` (default now, in the sites' time zone) and, for A03, a
departure (default four hours after the arrival, or now if sooner: never in the future).
``pivot simulate --arrival-of PATIENT_ID`` prints one (README walkthrough).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.defisante.codes import JSON, NAM_SYSTEM
from gateway.simulate import SITES

ZONE = ZoneInfo("America/Montreal")
_SEX = {"male": "M", "female": "F", "other": "O", "unknown": "U"}


def site_codes() -> list[str]:
    return [code for code, _facility, _charset in SITES]


def visit_message(patient: JSON, *, site: str = "HLA", trigger: str = "A04", visit: str | None = None,
                  when: datetime | None = None, control_id: str | None = None,
                  reason: tuple[str, str] = ("R07.4", "Douleur thoracique"), with_nam: bool = True,
                  departure: datetime | None = None, patient_class: str = "E",
                  kin: list[tuple[str, str]] | None = None) -> bytes:
    """One ADT message (UTF-8 ER7) of a visit of ``patient`` at ``site`` (a code of simulate.SITES);
    ``kin``: next of kin as (given name, HL7 table 0063 relationship code), one NK1 each."""
    facility = next((f for code, f, _c in SITES if code == site), None)
    if facility is None:
        raise ValueError(f"unknown site (one of {', '.join(site_codes())})")
    at = (when or datetime.now(ZONE)).astimezone(ZONE)
    pid = str(patient["id"])
    digest = hashlib.sha256(f"{pid}|{site}".encode()).hexdigest()
    mrn = f"{site}{int(digest[:10], 16) % 10_000_000:07d}"
    visit = visit or f"V{site}{int(hashlib.sha256(f'{pid}|{at.isoformat()}'.encode()).hexdigest()[:10], 16) % 10**9}"
    cid = control_id or f"DS{hashlib.sha256(f'{visit}|{trigger}|{at.isoformat()}'.encode()).hexdigest()[:16]}"
    nam = next((str(i["value"]) for i in patient.get("identifier") or []
                if isinstance(i, dict) and i.get("system") == NAM_SYSTEM and i.get("value")), "")
    ids = f"{mrn}^^^{site}^MR" + (f"~{nam}^^^RAMQ^JHN" if with_nam and nam else "")
    name: JSON = next(iter(patient.get("name") or []), {})
    family, given = str(name.get("family", "")), " ".join(name.get("given") or [])
    born = str(patient.get("birthDate", "")).replace("-", "")
    sex = _SEX.get(str(patient.get("gender", "")), "U")
    # a discharge is never in the future: four hours after the arrival, or now if that is sooner
    leave = departure or max(at, min(at + timedelta(hours=4), datetime.now(ZONE)))
    discharge = f"{leave:%Y%m%d%H%M}" if trigger == "A03" else ""
    location = "URG^CIV01^1" if patient_class == "E" else "MED^301^1"
    stamp = leave if trigger == "A03" else at
    segments = [
        f"MSH|^~\\&|URGENCE|{facility}|PIVOT|CISSS-LAURENTIDES|{stamp:%Y%m%d%H%M%S}||ADT^{trigger}^ADT_A01|{cid}|P|2.5.1"
        "||||||UNICODE UTF-8|FR",
        f"EVN|{trigger}|{stamp:%Y%m%d%H%M%S}",
        f"PID|1||{ids}||{family}^{given}^^^^^L||{born}|{sex}",
        "PD1|||GMF des Laurentides^^^^^^^^^GMF123|1234567^Bélanger^Marie^^^Dre^^^CMQ",
        *(f"NK1|{n}|{family}^{kin_given}|{relation}^^HL70063" for n, (kin_given, relation) in enumerate(kin or [], 1)),
        f"PV1|1|{patient_class}|{location}^{site}||||7654321^Lefebvre^Paul^^^Dr^^^CMQ|||EMR||||7|||||{visit}^^^{site}^VN"
        f"|||||||||||||||||||||||||{at:%Y%m%d%H%M}|{discharge}",
        f"PV2|||{reason[0]}^{reason[1]}^I10CA",
        f"DG1|1||{reason[0]}^{reason[1]}^I10CA||{at:%Y%m%d%H%M}|A",
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")
