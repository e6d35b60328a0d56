"""Synthetic Québec ER feed (fictitious people) for demos, tests and the benchmark.

``er_message(i)`` builds the i-th message of a deterministic feed: an ADT^A04 ER registration
(PV1-2 = E) with the NAM beside a site MRN, a family doctor in PD1-4, a next of kin, a reason for
visit in PV2-3 and two DG1 diagnoses, about 1.2 KB.

Canary mode (a test-only switch, not a gateway setting: it is read here, never by gateway.settings):
with ``PIVOT_SAMPLES_CANARY=1`` in the environment every person of the feed is a *canary*, with
values nobody else has and that are easy to look for, still valid HL7 and FHIR:

- family names ``Canari…`` (NK1 next of kin too), given names ``Zéph…`` (``Zeph…`` in ASCII);
- born in 1931 (PID-7 ``1931MMDD``, FHIR ``1931-MM-DD``), so the NAM is ``CANZ31…`` and well formed;
- street ``<n> rue du Canari``.

Everything else (MRN, visit, control id, site, dates of the visit, diagnoses, the sex of each person)
is what the default feed has; NAMs stay distinct for ``i < 7300``. tests/test_privacy_canary_suite.py
runs the end-to-end tests with the switch on and asserts no canary value reaches a log (tests that
pin the default names, e.g. test_mappings_messages.py, expect it off). ``person(i)`` gives the
values ``er_message(i)`` uses. Off (unset, empty or ``0``), the feed is unchanged byte for byte.
"""

from __future__ import annotations

import os
import unicodedata
from datetime import datetime, timedelta
from typing import NamedTuple

SITES = (("HSA", "CSSS-SOMMETS-HSA", "Hôpital Sainte-Agathe"), ("HLA", "CSSS-ARGENTEUIL-HLA", "Hôpital de Lachute"))
FAMILY = ("Tremblay", "Gagnon", "Roy", "Côté", "Bouchard", "Gauthier", "Morin", "Lavoie", "Fortin", "Gélinas")
GIVEN = (("Jérôme", "M"), ("Hélène", "F"), ("François", "M"), ("Élise", "F"), ("Amélie", "F"), ("Benoît", "M"))
REASONS = (("R07.4", "Douleur thoracique"), ("J44.1", "MPOC avec exacerbation aiguë"),
           ("I50.0", "Insuffisance cardiaque"), ("F10.2", "Dépendance à l'alcool"), ("E11.9", "Diabète type 2"))

CANARY_ENV = "PIVOT_SAMPLES_CANARY"
CANARY_FAMILY = ("Canarijaune", "Canarivert", "Canaribleu", "Canariroux", "Canarigris")
CANARY_GIVEN = (("Zéphyrin", "M"), ("Zéphirine", "F"), ("Zéphyr", "M"), ("Zéphyrine", "F"), ("Zéphira", "F"),
                ("Zéphirin", "M"))  # the sexes of GIVEN, in the same order
CANARY_BIRTH_YEAR = 1931
CANARY_STREET = "rue du Canari"
CANARY_NAM_PREFIX = "CANZ"
CANARY_MARKERS = ("canari", "zéph", "zeph")
"""Lower-case fragments every canary name and street carries (search case-insensitively)."""


def nam(family: str, given: str, born: datetime, sex: str, seq: int) -> str:
    """A well-formed (fictitious) NAM: 3 letters of the surname, 1 of the given name, YYMMDD (+50 F), 2 digits."""
    letters = "".join(c for c in family.upper() if c.isalpha())
    letters = (letters.replace("Ô", "O").replace("É", "E") + "XXX")[:3] + given.upper()[0].replace("É", "E")
    month = born.month + (50 if sex == "F" else 0)
    return f"{letters}{born:%y}{month:02d}{born:%d}{seq % 100:02d}"


class SamplePerson(NamedTuple):
    family: str
    given: str
    sex: str
    born: datetime
    nam: str
    street: str


def canary_enabled() -> bool:
    """Whether ``PIVOT_SAMPLES_CANARY`` asks for canary people (read at each call)."""
    return os.environ.get(CANARY_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def person(i: int, *, canary: bool | None = None) -> SamplePerson:
    """The person of ``er_message(i)``; ``canary`` None follows ``PIVOT_SAMPLES_CANARY``."""
    if canary_enabled() if canary is None else canary:
        family = CANARY_FAMILY[i % len(CANARY_FAMILY)]
        given, sex = CANARY_GIVEN[i % len(CANARY_GIVEN)]
        born = datetime(CANARY_BIRTH_YEAR, 1, 1) + timedelta(days=(i * 397) % 365)
        street = f"{100 + i} {CANARY_STREET}"
    else:
        family = FAMILY[i % len(FAMILY)]
        given, sex = GIVEN[i % len(GIVEN)]
        born = datetime(1940, 1, 1) + timedelta(days=(i * 397) % 20000)
        street = f"{100 + i} rue Principale"
    return SamplePerson(family, given, sex, born, nam(family, given, born, sex, i), street)


def er_message(i: int, *, trigger: str = "A04", site: int | None = None, control_id: str | None = None,
               charset: str = "UNICODE UTF-8", when: datetime | None = None,
               ack_modes: tuple[str, str] = ("", "")) -> bytes:
    """The i-th synthetic ER registration, encoded per ``charset`` (MSH-18); MSH-15/16 from ``ack_modes``."""
    code, facility, _name = SITES[i % len(SITES) if site is None else site]
    family, given, sex, born, health_no, street = person(i)
    at = when or datetime(2026, 1, 1, 8, 0) + timedelta(minutes=17 * i)
    reason_code, reason = REASONS[i % len(REASONS)]
    diag2_code, diag2 = REASONS[(i + 2) % len(REASONS)]
    mrn = f"{code}{100000 + i}"
    visit = f"V{code}{500000 + i}"
    cid = control_id or f"{code}{i:08d}"
    segments = [
        f"MSH|^~\\&|URGENCE|{facility}|PIVOT|CISSS-LAURENTIDES|{at:%Y%m%d%H%M%S}||ADT^{trigger}^ADT_A01|{cid}|P|2.5.1"
        f"|||{ack_modes[0]}|{ack_modes[1]}||{charset}|FR",
        f"EVN|{trigger}|{at:%Y%m%d%H%M%S}",
        f"PID|1||{mrn}^^^{code}^MR~{health_no}^^^RAMQ^JHN||{family}^{given}^^^^^L||{born:%Y%m%d}|{sex}|||"
        f"{street}^^Sainte-Agathe-des-Monts^QC^J8C 1A{i % 10}^CA^H||^PRN^PH^^^819^5550{i % 1000:03d}"
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
