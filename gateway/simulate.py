"""``pivot simulate``: a realistic year of ER ADT from several sites, with its ground truth.

Fictitious people only. The population mixes:

- ordinary people: a few ER visits a year at most (Poisson, mean 0.35), mostly at their home site;
- **chronic frequent users** (``frequent`` share, default 3 %): 5–16 ER visits a year for chronic
  problems (COPD, heart failure, diabetes, alcohol dependence, depression), a third of them at two
  or more sites: the people the candidate finder must list;
- **pregnancy-related repeaters** (0.5 %): women of 18–40 with 4–8 visits, all with an ICD-10-CA
  O-chapter diagnosis (bleeding in early pregnancy…): the program's own lesson, never listed;
- data-quality cases real feeds have: the third site often sends no NAM (site MRN only) and fixes
  it later with an A08; some registrations are cancelled (A11, never an ER visit); some frequent
  users get a second chart at the third site (new MRN, no NAM, never fixed) that an A40 merges
  into their own a few hours or days later (``merged_nams`` in the ground truth).

Each visit is an A04 (ER registration, PV1-2 E) and an A03 (discharge) a few hours later; one in
ten is admitted (A01, PV1-2 I, then A03 days later). Messages come in time order. The ground
truth (JSON) lists the frequent users' NAMs, the pregnancy repeaters' NAMs and counts per person.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gateway.samples import nam

FAMILY = ("Tremblay", "Gagnon", "Roy", "Côté", "Bouchard", "Gauthier", "Morin", "Lavoie", "Fortin", "Gélinas",
          "Bélanger", "Lévesque", "Pelletier", "Bergeron", "Leblanc", "Paquette", "Girard", "Simard", "Boucher",
          "Caron", "Beaulieu", "Cloutier", "Dubé", "Poirier", "Fournier", "Lapointe", "Leclerc", "Lefebvre")
GIVEN_M = ("Jérôme", "François", "Benoît", "André", "Gaétan", "Réjean", "Luc", "Michel", "Stéphane", "Denis")
GIVEN_F = ("Hélène", "Élise", "Amélie", "Ginette", "Francine", "Josée", "Céline", "Sylvie", "Nathalie", "Lucie")
SITES = (("HSA", "CSSS-SOMMETS-HSA", "UNICODE UTF-8"), ("HLA", "CSSS-ARGENTEUIL-HLA", "8859/1"),
         ("HSJ", "CSSS-RDN-HSJ", "UNICODE UTF-8"), ("HMB", "CSSS-PDH-HMB", "UNICODE UTF-8"))
CHRONIC = (("J44.1", "MPOC avec exacerbation aiguë"), ("I50.0", "Insuffisance cardiaque congestive"),
           ("E11.9", "Diabète de type 2"), ("F10.2", "Dépendance à l'alcool"), ("F32.9", "Épisode dépressif"),
           ("R07.4", "Douleur thoracique"))
ACUTE = (("S93.4", "Entorse de la cheville"), ("J06.9", "Infection des voies respiratoires"),
         ("R10.4", "Douleur abdominale"), ("S61.0", "Plaie ouverte du doigt"), ("N39.0", "Infection urinaire"))
PREGNANCY = (("O20.0", "Menace d'avortement"), ("O20.9", "Hémorragie du début de la grossesse"),
             ("O21.0", "Hyperémèse gravidique légère"))


@dataclass
class Person:
    n: int
    family: str
    given: str
    sex: str
    born: datetime
    nam: str
    home: int
    kind: str  # ordinary | frequent | pregnancy
    mrns: dict[int, str] = field(default_factory=dict)
    er_visits: int = 0
    cancelled: int = 0
    sites: set[int] = field(default_factory=set)
    merged: int = 0  # visits registered under a second MRN, merged later by an A40


@dataclass
class Simulation:
    messages: list[tuple[datetime, bytes]]
    truth: dict[str, Any]


def _person(rng: random.Random, n: int, kind: str, sites: int, start: datetime) -> Person:
    sex = "F" if kind == "pregnancy" else rng.choice("MF")
    given = rng.choice(GIVEN_F if sex == "F" else GIVEN_M)
    family = rng.choice(FAMILY)
    if kind == "pregnancy":
        age = rng.randint(18, 40)
    elif kind == "frequent":
        age = rng.randint(40, 92)
    else:
        age = rng.randint(1, 95)
    born = start - timedelta(days=age * 365 + rng.randint(0, 364))
    return Person(n, family, given, sex, born, nam(family, given, born, sex, n), n % sites, kind)


def simulate(*, sites: int = 3, people: int = 5000, days: int = 365, seed: int = 1,
             start: datetime | None = None, frequent: float = 0.03, pregnancy: float = 0.005) -> Simulation:
    """Generate the feed (time-ordered raw messages) and its ground truth."""
    if not 1 <= sites <= len(SITES):
        raise ValueError(f"sites must be between 1 and {len(SITES)}")
    rng = random.Random(seed)  # noqa: S311 - reproducible synthetic data, not security
    start = start or datetime(2025, 1, 1)
    end = start + timedelta(days=days)
    n_freq, n_preg = int(people * frequent), int(people * pregnancy)
    kinds = ["frequent"] * n_freq + ["pregnancy"] * n_preg + ["ordinary"] * (people - n_freq - n_preg)
    rng.shuffle(kinds)
    population = [_person(rng, n, kind, sites, start) for n, kind in enumerate(kinds)]
    out: list[tuple[datetime, bytes]] = []
    counter = [0]
    for person in population:
        for when, _trigger, text in _events(rng, person, sites, start, days, counter):
            if when < end:
                out.append((when, text))
    out.sort(key=lambda item: item[0])
    truth = {
        "sites": sites, "people": people, "days": days, "seed": seed, "start": start.isoformat(),
        "frequent_nams": sorted(p.nam for p in population if p.kind == "frequent"),
        "pregnancy_nams": sorted(p.nam for p in population if p.kind == "pregnancy"),
        "er_visits": {p.nam: p.er_visits for p in population if p.er_visits},
        "multi_site_nams": sorted(p.nam for p in population if len(p.sites) > 1),
        "merged_nams": sorted(p.nam for p in population if p.merged),
        "messages": len(out),
    }
    return Simulation(out, truth)


def _events(rng: random.Random, p: Person, sites: int, start: datetime, days: int,
            counter: list[int]) -> list[tuple[datetime, str, bytes]]:
    if p.kind == "frequent":
        count = rng.randint(5, 16)
    elif p.kind == "pregnancy":
        count = rng.randint(4, 8)
    else:
        count = min(_poisson(rng, 0.35), 3)
    events: list[tuple[datetime, str, bytes]] = []
    roaming = p.kind == "frequent" and rng.random() < 0.35
    for _ in range(count):
        site = rng.randrange(sites) if roaming or rng.random() < 0.05 else p.home
        at = start + timedelta(minutes=rng.randint(0, days * 24 * 60 - 1))
        if p.kind == "frequent":
            diag = rng.choice(CHRONIC)
        elif p.kind == "pregnancy":
            diag = rng.choice(PREGNANCY)
        else:
            diag = rng.choice(ACUTE + CHRONIC[-1:])
        events.extend(_visit(rng, p, site, at, diag, counter))
    return events


def _visit(rng: random.Random, p: Person, site: int, at: datetime, diag: tuple[str, str],
           counter: list[int]) -> list[tuple[datetime, str, bytes]]:
    code = SITES[site][0]
    if site not in p.mrns:
        p.mrns[site] = f"{code}{200000 + p.n}"
    counter[0] += 1
    visit = f"V{code}{700000 + counter[0]}"
    no_nam = site == 2 and rng.random() < 0.5  # the third site often registers without the NAM
    # now and then the third site opens a second chart (new MRN, no NAM) that an A40 merges later
    duplicate = no_nam and p.kind == "frequent" and rng.random() < 0.25
    if duplicate:
        return _duplicate_chart_visit(rng, p, site, at, visit, diag, counter)
    events = [(at, "A04", _msg(p, site, at, "A04", "E", visit, diag, counter, with_nam=not no_nam))]
    if rng.random() < 0.03:  # registered by mistake: cancelled (the A11 carries the NAM)
        cancel = at + timedelta(minutes=rng.randint(5, 60))
        events.append((cancel, "A11", _msg(p, site, cancel, "A11", "E", visit, diag, counter, with_nam=True)))
        p.cancelled += 1
        return events
    p.er_visits += 1
    p.sites.add(site)
    stay = rng.randint(90, 900)
    leave = at + timedelta(minutes=stay)
    if no_nam:  # the NAM is added while the patient is still in the ER
        later = at + timedelta(minutes=rng.randint(20, min(240, stay - 10)))
        events.append((later, "A08", _msg(p, site, later, "A08", "E", visit, diag, counter, with_nam=True)))
    if rng.random() < 0.1:
        adm = f"I{visit[1:]}"
        events.append((leave, "A01", _msg(p, site, leave, "A01", "I", adm, diag, counter, with_nam=True)))
        out = leave + timedelta(days=rng.randint(1, 12))
        events.append((out, "A03", _msg(p, site, out, "A03", "I", adm, diag, counter, with_nam=True,
                                        admitted=leave)))
    events.append((leave, "A03", _msg(p, site, leave, "A03", "E", visit, diag, counter, with_nam=True,
                                      admitted=at)))
    return events


def _duplicate_chart_visit(rng: random.Random, p: Person, site: int, at: datetime, visit: str,
                           diag: tuple[str, str], counter: list[int]) -> list[tuple[datetime, str, bytes]]:
    """A visit registered under a second MRN without the NAM (A04, A03), then an A40 merging that
    chart into the person's own (PID = the surviving MRN + NAM, MRG = the duplicate MRN)."""
    code, facility, charset = SITES[site]
    dup = f"{code}9{200000 + p.n}"
    leave = at + timedelta(minutes=rng.randint(90, 900))
    events = [(at, "A04", _msg(p, site, at, "A04", "E", visit, diag, counter, with_nam=False, mrn=dup)),
              (leave, "A03", _msg(p, site, leave, "A03", "E", visit, diag, counter, with_nam=False, mrn=dup,
                                  admitted=at))]
    merge = leave + timedelta(hours=rng.randint(2, 72))
    counter[0] += 1
    segments = [
        f"MSH|^~\\&|URGENCE|{facility}|PIVOT|CISSS-LAURENTIDES|{merge:%Y%m%d%H%M%S}||ADT^A40^ADT_A39|"
        f"{code}S{counter[0]:09d}|P|2.5.1||||||{charset}|FR",
        f"EVN|A40|{merge:%Y%m%d%H%M%S}",
        f"PID|1||{p.mrns[site]}^^^{code}^MR~{p.nam}^^^RAMQ^JHN||{p.family}^{p.given}^^^^^L||{p.born:%Y%m%d}|{p.sex}",
        f"MRG|{dup}^^^{code}^MR",
    ]
    text = "\r".join(segments) + "\r"
    events.append((merge, "A40", text.encode("latin-1" if charset == "8859/1" else "utf-8")))
    p.er_visits += 1
    p.merged += 1
    p.sites.add(site)
    return events


def _msg(p: Person, site: int, at: datetime, trigger: str, pclass: str, visit: str, diag: tuple[str, str],
         counter: list[int], *, with_nam: bool, admitted: datetime | None = None, mrn: str | None = None) -> bytes:
    code, facility, charset = SITES[site]
    counter[0] += 1
    cid = f"{code}S{counter[0]:09d}"
    ids = f"{mrn or p.mrns[site]}^^^{code}^MR" + (f"~{p.nam}^^^RAMQ^JHN" if with_nam else "")
    arrival = admitted or at
    discharge = f"{at:%Y%m%d%H%M}" if trigger == "A03" else ""
    location = "URG^CIV01^1" if pclass == "E" else "MED^301^1"
    segments = [
        f"MSH|^~\\&|URGENCE|{facility}|PIVOT|CISSS-LAURENTIDES|{at:%Y%m%d%H%M%S}||ADT^{trigger}^ADT_A01|{cid}|P|2.5.1"
        f"||||||{charset}|FR",
        f"EVN|{trigger}|{at:%Y%m%d%H%M%S}",
        f"PID|1||{ids}||{p.family}^{p.given}^^^^^L||{p.born:%Y%m%d}|{p.sex}|||"
        f"{100 + p.n % 900} rue Principale^^Sainte-Agathe-des-Monts^QC^J8C 1A1^CA^H",
        "PD1|||GMF des Laurentides^^^^^^^^^GMF123|1234567^Bélanger^Marie^^^Dre^^^CMQ",
        f"PV1|1|{pclass}|{location}^{code}||||7654321^Lefebvre^Paul^^^Dr^^^CMQ|||EMR||||7|||||{visit}^^^{code}^VN"
        f"|||||||||||||||||||||||||{arrival:%Y%m%d%H%M}|{discharge}",
        f"PV2|||{diag[0]}^{diag[1]}^I10CA",
        f"DG1|1||{diag[0]}^{diag[1]}^I10CA||{arrival:%Y%m%d%H%M}|A",
    ]
    text = "\r".join(segments) + "\r"
    return text.encode("latin-1" if charset == "8859/1" else "utf-8")


def _poisson(rng: random.Random, mean: float) -> int:
    k, p, limit = 0, 1.0, pow(2.718281828459045, -mean)
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def write(sim: Simulation, feed: Any, truth_path: str | None) -> None:
    """Write the feed (messages back to back, CR-terminated segments, one LF between messages)."""
    for _when, raw in sim.messages:
        feed.write(raw + b"\n")
    if truth_path:
        with open(truth_path, "w", encoding="utf-8") as fh:
            json.dump(sim.truth, fh, indent=1, ensure_ascii=False)
