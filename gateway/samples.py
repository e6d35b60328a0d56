"""Synthetic Québec ER feed (fictitious people) for demos, tests and the benchmark.

``er_message(i)`` builds the i-th message of a deterministic feed: an ADT^A04 ER registration
(PV1-2 = E) with the NAM beside a site MRN, a family doctor in PD1-4, a next of kin, a reason for
visit in PV2-3 and two DG1 diagnoses, about 1.2 KB.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime, timedelta

SITES = (("HSA", "CSSS-SOMMETS-HSA", "Hôpital Sainte-Agathe"), ("HLA", "CSSS-ARGENTEUIL-HLA", "Hôpital de Lachute"))
FAMILY = ("Tremblay", "Gagnon", "Roy", "Côté", "Bouchard", "Gauthier", "Morin", "Lavoie", "Fortin", "Gélinas")
GIVEN = (("Jérôme", "M"), ("Hélène", "F"), ("François", "M"), ("Élise", "F"), ("Amélie", "F"), ("Benoît", "M"))
REASONS = (("R07.4", "Douleur thoracique"), ("J44.1", "MPOC avec exacerbation aiguë"),
           ("I50.0", "Insuffisance cardiaque"), ("F10.2", "Dépendance à l'alcool"), ("E11.9", "Diabète type 2"))


def nam(family: str, given: str, born: datetime, sex: str, seq: int) -> str:
    """A well-formed (fictitious) NAM: 3 letters of the surname, 1 of the given name, YYMMDD (+50 F), 2 digits."""
    letters = "".join(c for c in family.upper() if c.isalpha())
    letters = (letters.replace("Ô", "O").replace("É", "E") + "XXX")[:3] + given.upper()[0].replace("É", "E")
    month = born.month + (50 if sex == "F" else 0)
    return f"{letters}{born:%y}{month:02d}{born:%d}{seq % 100:02d}"


def er_message(i: int, *, trigger: str = "A04", site: int | None = None, control_id: str | None = None,
               charset: str = "UNICODE UTF-8", when: datetime | None = None,
               ack_modes: tuple[str, str] = ("", "")) -> bytes:
    """The i-th synthetic ER registration, encoded per ``charset`` (MSH-18); MSH-15/16 from ``ack_modes``."""
    code, facility, _name = SITES[i % len(SITES) if site is None else site]
    family = FAMILY[i % len(FAMILY)]
    given, sex = GIVEN[i % len(GIVEN)]
    born = datetime(1940, 1, 1) + timedelta(days=(i * 397) % 20000)
    at = when or datetime(2026, 1, 1, 8, 0) + timedelta(minutes=17 * i)
    reason_code, reason = REASONS[i % len(REASONS)]
    diag2_code, diag2 = REASONS[(i + 2) % len(REASONS)]
    mrn = f"{code}{100000 + i}"
    visit = f"V{code}{500000 + i}"
    cid = control_id or f"{code}{i:08d}"
    health_no = nam(family, given, born, sex, i)
    segments = [
        f"MSH|^~\\&|URGENCE|{facility}|PIVOT|CISSS-LAURENTIDES|{at:%Y%m%d%H%M%S}||ADT^{trigger}^ADT_A01|{cid}|P|2.5.1"
        f"|||{ack_modes[0]}|{ack_modes[1]}||{charset}|FR",
        f"EVN|{trigger}|{at:%Y%m%d%H%M%S}",
        f"PID|1||{mrn}^^^{code}^MR~{health_no}^^^RAMQ^JHN||{family}^{given}^^^^^L||{born:%Y%m%d}|{sex}|||"
        f"{100 + i} rue Principale^^Sainte-Agathe-des-Monts^QC^J8C 1A{i % 10}^CA^H||^PRN^PH^^^819^5550{i % 1000:03d}"
        "|||||||||||||||||",
        "PD1|||GMF des Laurentides^^^^^^^^^GMF123|1234567^Bélanger^Marie^^^Dre^^^CMQ",
        f"NK1|1|{family}^Louise|SPO^Conjoint^HL70063|||^PRN^PH^^^819^5551234",
        f"PV1|1|E|URG^CIV{i % 20:02d}^1^{code}||||7654321^Lefebvre^Paul^^^Dr^^^CMQ|||EMR||||7|||||{visit}^^^{code}^VN"
        f"|||||||||||||||||||||||||{at:%Y%m%d%H%M}",
        f"PV2|||{reason_code}^{reason}^I10CA",
        f"DG1|1||{reason_code}^{reason}^I10CA||{at:%Y%m%d%H%M}|A",
        f"DG1|2||{diag2_code}^{diag2}^I10CA||{at:%Y%m%d%H%M}|W",
        "ZPV|1|CIV|ambulance^Arrivée en ambulance",
    ]
    text = "\r".join(segments) + "\r"
    codec = {"UNICODE UTF-8": "utf-8", "8859/1": "latin-1", "ASCII": "ascii", "": "utf-8"}[charset]
    if codec == "ascii":  # plain-ASCII senders drop the accents
        text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return text.encode(codec)
