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


# -- a site's ER registration as a Québec ER system sends it (benchmarks: bench/site.py, bench/backfill.py) --------
CSSS_SITES = (("HSA", "CSSS-SOMMETS-HSA", "Sainte-Agathe-des-Monts", "J8C"),
              ("HLA", "CSSS-ARGENTEUIL-HLA", "Lachute", "J8H"),
              ("HSJ", "CSSS-RDN-HSJ", "Saint-Jérôme", "J7Z"))
SITE_FAMILY = ("Tremblay", "Gagnon", "Roy", "Côté", "Bouchard", "Gauthier", "Morin", "Lavoie", "Fortin", "Gélinas",
               "Bélanger", "Lévesque", "Pelletier", "Bergeron", "Leblanc", "Paquette", "Girard", "Simard", "Boucher",
               "Caron", "Beaulieu", "Cloutier", "Dubé", "Poirier", "Fournier", "Lapointe", "Leclerc", "Lefebvre")
SITE_GIVEN = (("Jérôme", "M"), ("Hélène", "F"), ("François", "M"), ("Élise", "F"), ("Amélie", "F"), ("Benoît", "M"),
              ("Gaétan", "M"), ("Ginette", "F"), ("Réjean", "M"), ("Josée", "F"), ("Stéphane", "M"), ("Céline", "F"))
MARITAL_CODES = (("M", "Marié(e)"), ("S", "Célibataire"), ("D", "Divorcé(e)"), ("W", "Veuf(ve)"), ("C", "Union libre"))
TRIAGE = (("2", "Très urgent"), ("3", "Urgent"), ("4", "Moins urgent"), ("5", "Non urgent"))
ARRIVAL = (("AMB", "Arrivée en ambulance"), ("AUTO", "Arrivée par ses propres moyens"), ("POL", "Escorte policière"))
SITE_PEOPLE = 3_650_000
"""``site_person(i)`` is a different person (a different NAM) for every ``0 <= i < SITE_PEOPLE``."""


def site_person(i: int) -> SamplePerson:
    """Person ``i`` of the site feed: born 1925–2024 (day and NAM sequence together unique per ``i``)."""
    given, sex = SITE_GIVEN[(i // 3) % len(SITE_GIVEN)]
    family = SITE_FAMILY[(i // 7) % len(SITE_FAMILY)]
    born = datetime(1925, 1, 1) + timedelta(days=((i // 100) * 7919) % 36_500)
    return SamplePerson(family, given, sex, born, nam(family, given, born, sex, i % 100), f"{100 + i % 9900} rue "
                        + ("Principale", "Saint-Vincent", "des Érables", "du Couvent")[i % 4])


def _fields(name: str, values: dict[int, str]) -> str:
    """A segment from its non-empty fields by number (the rest empty, no trailing separators)."""
    top = max(values)
    return "|".join([name] + [values.get(n, "") for n in range(1, top + 1)])


def _site_pid(i: int, code: str, facility: str, city: str, postal: str, v: int, cell_shift: int) -> str:
    family, given, sex, born, health_no, street = site_person(i)
    marital, marital_text = MARITAL_CODES[i % len(MARITAL_CODES)]
    phone, cell = f"{i % 10_000:04d}", f"{(i + cell_shift) % 10_000:04d}"
    return _fields("PID", {
        1: "1", 3: f"{code}{1_000_000 + i}^^^{code}^MR^{facility}~{health_no}^^^RAMQ^JHN^^^20{27 + i % 4}"
                  f"{born:%m}{min(born.day, 28):02d}",
        5: f"{family}^{given}^^^^^L", 6: "Ouellet^^^^^^M", 7: f"{born:%Y%m%d}", 8: sex,
        11: f"{street}^^{city}^QC^{postal} 1A{i % 10}^CA^H~C.P. {i % 900 + 1}^^{city}^QC^{postal} 2B{i % 10}^CA^M",
        13: f"^PRN^PH^^^819^555{phone}~^ORN^CP^^^819^444{cell}", 14: f"^WPN^PH^^^450^555{phone}^{i % 90 + 10}",
        15: "fr^Français^ISO639", 16: f"{marital}^{marital_text}^HL70002", 18: f"A{code}{v:09d}^^^{code}^AN",
        23: "Montréal", 30: "N"})


def _site_pv1(code: str, facility: str, v: int, trigger: str, arrived: datetime, at: datetime) -> str:
    doctor = "7654321^Lefebvre^Paul^^^Dr^^^CMQ^^^^MD"
    mode = ARRIVAL[v % len(ARRIVAL)][0]
    values = {1: "1", 2: "E", 3: f"URG^CIV{v % 20:02d}^1^{code}^^^^^Civière {v % 20:02d}", 4: "E^Urgence^HL70007",
              7: doctor, 8: f"{1000000 + v % 500:07d}^Gingras^Anne^^^Dre^^^CMQ^^^^MD", 10: "EMR",
              14: "7" if mode == "AMB" else "1", 17: doctor, 18: "E", 19: f"V{code}{v:08d}^^^{code}^VN",
              20: "RAMQ", 39: facility, 44: f"{arrived:%Y%m%d%H%M}"}
    if trigger == "A03":
        values |= {36: "01", 45: f"{at:%Y%m%d%H%M}"}
    return _fields("PV1", values)


def site_message(i: int, *, trigger: str = "A04", site: int | None = None, visit: int | None = None,
                 when: datetime | None = None, arrived: datetime | None = None,
                 ack_modes: tuple[str, str] = ("", ""), control_id: str | None = None) -> bytes:
    """An ER message of person ``site_person(i)`` as a Québec ER system sends it, ~1.4 KB UTF-8.

    MSH (MSH-15/16 from ``ack_modes``: ``("", "")`` original mode, ``("AL", "NE")`` enhanced), EVN with
    the operator, PID (site MRN + NAM, mother's maiden name, two addresses, home/cell/work phones,
    language, marital status, account number), PD1 family doctor, NK1, PV1 (PV1-19 visit number
    ``V<site><visit>``, PV1-44 arrival; an A03 also PV1-36 disposition and PV1-45 departure), PV2,
    two DG1 and a ZER triage segment. ``trigger`` A04 (registration), A08 (update: a new cell phone)
    or A03 (discharge, ADT_A03 without NK1). ``visit`` defaults to ``i``; the control id is unique per
    site, trigger and visit unless given; ``when`` is the event time, ``arrived`` the visit's arrival
    (PV1-44; default ``when``, an A03 five hours before it).
    """
    code, facility, city, postal = CSSS_SITES[i % len(CSSS_SITES) if site is None else site]
    family, _given, _sex, _born, _nam, street = site_person(i)
    v = i if visit is None else visit
    at = when or datetime(2026, 1, 1, 8, 0) + timedelta(seconds=61 * v)
    arrived = arrived or (at - timedelta(hours=5) if trigger == "A03" else at)
    reason_code, reason = REASONS[v % len(REASONS)]
    diag2_code, diag2 = REASONS[(v + 2) % len(REASONS)]
    level, level_text = TRIAGE[v % len(TRIAGE)]
    mode, mode_text = ARRIVAL[v % len(ARRIVAL)]
    phone = f"{i % 10_000:04d}"
    structure = "ADT_A03" if trigger == "A03" else "ADT_A01"
    ts = f"{at:%Y%m%d%H%M%S}"
    segments = [
        f"MSH|^~\\&|SIURGENCES|{facility}|PIVOT|CISSS-LAURENTIDES|{ts}||ADT^{trigger}^{structure}|"
        f"{control_id or f'{code}{trigger}{v:010d}'}|P|2.5.1|||{ack_modes[0]}|{ack_modes[1]}|CAN|UNICODE UTF-8|FR",
        f"EVN|{trigger}|{ts}|||AGT{v % 40:03d}^Lalonde^Sylvie^^^^^^{code}|{ts}|{facility}",
        _site_pid(i, code, facility, city, postal, v, v if trigger == "A08" else 0),
        "PD1|||GMF des Laurentides^^^^^^^^^GMF123|1234567^Bélanger^Marie^^^Dre^^^CMQ^^^^MD",
        f"NK1|1|{family}^Louise^^^^^L|SPO^Conjoint(e)^HL70063|{street}^^{city}^QC^{postal} 1A{i % 10}^CA^H|"
        f"^PRN^PH^^^819^555{phone}|^WPN^PH^^^819^666{phone}|C^Personne à contacter^HL70131",
        _site_pv1(code, facility, v, trigger, arrived, at),
        f"PV2|||{reason_code}^{reason}^I10CA||||||||||||||||||||N",
        f"DG1|1|I10|{reason_code}^{reason}^I10CA||{arrived:%Y%m%d%H%M}|A|||||||||1|"
        "7654321^Lefebvre^Paul^^^Dr^^^CMQ",
        f"DG1|2|I10|{diag2_code}^{diag2}^I10CA||{arrived:%Y%m%d%H%M}|W|||||||||2",
        f"ZER|1|{level}^{level_text}^CTAS|{mode}^{mode_text}|{arrived:%Y%m%d%H%M}|N",
    ]
    if trigger == "A03":
        segments.pop(4)  # ADT_A03 (v2.5.1) has no NK1
    return ("\r".join(segments) + "\r").encode("utf-8")
