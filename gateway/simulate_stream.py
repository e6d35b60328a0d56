"""``pivot simulate --stream``: what a real ADT stream does to one record, with what each message said.

Fictitious people only. Per person (NAM, two sites), in the order a feed sends them:

1. site A registers (A04): home phone, often a work phone, marital status, family doctor (PD1),
   address; visit ``V…`` starts;
2. A08s at site A that repeat only what changed: a new home phone, a new marital status, or an
   explicit null ``""`` (work phone, family doctor, marital status) — most carry nothing else;
3. the A03 (PV1-45 end, PV1-36 disposition), then an A08 after the A03 (no PV1-45, no PV1-36);
4. site B registers the same NAM with a sparser PID (name, birth date, sex, identifiers); a third
   of these come from a v2.8 sender whose phone is in PID-40 (personal mobile, XTN-2 ``PRS``);
5. a late A08 of site A (sent last, event time between 2 and 3): its home phone is the newest word
   on that phone, its marital status is older than what the other messages said.

Plus look-alike test patients: same name, birth date and sex, a new MRN each, no NAM, one A04.

Each :class:`Sent` carries, beside the raw message, what it *said*: element → value, ``""`` for
an explicit null, element absent for "not sent". A test can model the expected final record from
that alone (tests/test_replay_oracle.py), without the gateway's code.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gateway.samples import nam

SITE_A = ("HSA", "CSSS-SOMMETS-HSA")
SITE_B = ("HLA", "CSSS-ARGENTEUIL-HLA")
GP = "GMF des Laurentides^^^^^^^^^GMF123|1234567^Bélanger^Marie^^^Dre^^^CMQ"
MARITAL = ("M", "S", "D", "W")
_FAMILY = ("Tremblay", "Gagnon", "Roy", "Côté", "Bouchard", "Gauthier", "Morin", "Lavoie")
_GIVEN = ("Hélène", "Élise", "Amélie", "Ginette", "Jérôme", "François", "Benoît", "André")


@dataclass(frozen=True)
class Sent:
    """One message of the stream and what it said (``said``: PID elements; ``visit``: PV1 facts)."""

    at: datetime
    raw: bytes
    nam: str
    site: str
    trigger: str
    said: dict[str, str] = field(default_factory=dict)
    visit: dict[str, str] = field(default_factory=dict)


def _phone(rng: random.Random) -> str:
    return f"819555{rng.randint(0, 9999):04d}"


def _xtn(number: str, use: str) -> str:
    return f"^{use}^PH^^^{number[:3]}^{number[3:]}"


@dataclass
class _Person:
    n: int
    family: str
    given: str
    sex: str
    born: datetime
    nam: str


def stream(*, people: int = 30, lookalikes: int = 20, seed: int = 3, start: datetime | None = None) -> list[Sent]:
    """The stream, in send order (see module docstring)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible synthetic data, not security
    start = start or datetime(2026, 2, 1, 8, 0)
    out: list[tuple[datetime, int, Sent]] = []
    for n in range(people):
        sex = rng.choice("MF")
        family, given = rng.choice(_FAMILY), rng.choice(_GIVEN)
        born = datetime(1930 + rng.randint(0, 60), rng.randint(1, 12), rng.randint(1, 28))
        person = _Person(n, family, given, sex, born, nam(family, given, born, sex, n))
        t0 = start + timedelta(minutes=37 * n)
        for sent_at, msg in _person_stream(rng, person, t0):
            out.append((sent_at, len(out), msg))
    for k in range(lookalikes):
        at = start + timedelta(minutes=11 * k + 5)
        raw = _adt(SITE_A, at, "A04", f"TST{k:05d}", None, ("Test", "Patient", "F", datetime(1980, 1, 1)),
                   pid={}, visit=f"VT{k:05d}", pv1={})
        out.append((at, len(out), Sent(at, raw, "", SITE_A[0], "A04")))
    out.sort(key=lambda item: (item[0], item[1]))
    return [msg for _at, _n, msg in out]


def _person_stream(rng: random.Random, p: _Person, t0: datetime) -> list[tuple[datetime, Sent]]:
    who = (p.family, p.given, p.sex, p.born)
    mrn_a, mrn_b = f"A{300000 + p.n}", f"B{400000 + p.n}"
    visit = f"VA{600000 + p.n}"
    said: dict[str, str] = {"phone.home": _phone(rng), "marital": rng.choice(MARITAL), "gp": "yes"}
    if rng.random() < 0.5:
        said["phone.work"] = _phone(rng)
    msgs: list[tuple[datetime, Sent]] = []

    def add(at: datetime, site: tuple[str, str], trigger: str, mrn: str, what: dict[str, str],
            pv1: dict[int, str], facts: dict[str, str], *, v28: bool = False, sent_at: datetime | None = None,
            visit_no: str = visit) -> None:
        raw = _adt(site, at, trigger, mrn, p.nam, who, pid=_pid_fields(what), visit=visit_no, pv1=pv1,
                   gp=what.get("gp"), v28=v28)
        msgs.append((sent_at or at, Sent(at, raw, p.nam, site[0], trigger, dict(what), facts)))

    add(t0, SITE_A, "A04", mrn_a, said, {44: f"{t0:%Y%m%d%H%M}"}, {"status": "in-progress", "number": visit})
    changes = [{"phone.home": _phone(rng)}, {"marital": rng.choice(MARITAL)}, {"phone.work": ""}, {"gp": ""},
               {"marital": ""}, {}]
    for step in range(rng.randint(1, 3)):
        at = t0 + timedelta(minutes=30 * (step + 1))
        add(at, SITE_A, "A08", mrn_a, rng.choice(changes), {}, {"number": visit})
    end = t0 + timedelta(hours=3)
    add(end, SITE_A, "A03", mrn_a, {}, {45: f"{end:%Y%m%d%H%M}", 36: "01"},
        {"status": "finished", "end": f"{end:%Y%m%d%H%M}", "disposition": "01", "number": visit})
    after = t0 + timedelta(hours=4)
    add(after, SITE_A, "A08", mrn_a, rng.choice([{"marital": rng.choice(MARITAL)}, {}]), {}, {"number": visit})
    later = t0 + timedelta(days=1)
    v28 = rng.random() < 0.33
    add(later, SITE_B, "A04", mrn_b, {}, {44: f"{later:%Y%m%d%H%M}"},
        {"status": "in-progress", "number": f"VB{600000 + p.n}"}, v28=v28, visit_no=f"VB{600000 + p.n}")
    late = t0 + timedelta(hours=2)
    add(late, SITE_A, "A08", mrn_a, {"phone.home": _phone(rng), "marital": rng.choice(MARITAL)}, {},
        {"number": visit}, sent_at=later + timedelta(minutes=5))
    return msgs


def _pid_fields(what: dict[str, str]) -> dict[int, str]:
    fields: dict[int, str] = {}
    for key, num, use in (("phone.home", 13, "PRN"), ("phone.work", 14, "WPN")):
        if key in what:
            fields[num] = _xtn(what[key], use) if what[key] else '""'
    if "marital" in what:
        fields[16] = what["marital"] or '""'
    return fields


def _adt(site: tuple[str, str], at: datetime, trigger: str, mrn: str, nam_: str | None,
         who: tuple[str, str, str, datetime], *, pid: dict[int, str], visit: str, pv1: dict[int, str],
         gp: str | None = None, v28: bool = False) -> bytes:
    code, facility = site
    family, given, sex, born = who
    ids = f"{mrn}^^^{code}^MR" + (f"~{nam_}^^^RAMQ^JHN" if nam_ else "")
    version = "2.8" if v28 else "2.5.1"
    pid_f = [""] * 41
    pid_f[1], pid_f[3], pid_f[5], pid_f[7], pid_f[8] = "1", ids, f"{family}^{given}", f"{born:%Y%m%d}", sex
    for num, text in pid.items():
        pid_f[num] = text
    if v28:
        pid_f[40] = _xtn(f"450555{at.minute:02d}{at.hour:02d}", "PRS")
    pv1_f = [""] * 46
    pv1_f[1], pv1_f[2], pv1_f[3], pv1_f[19] = "1", "E", f"URG^CIV01^1^{code}", f"{visit}^^^{code}^VN"
    for num, text in pv1.items():
        pv1_f[num] = text
    segments = [f"MSH|^~\\&|URGENCE|{facility}|PIVOT|CISSS-LAURENTIDES|{at:%Y%m%d%H%M%S}||ADT^{trigger}^ADT_A01|"
                f"{code}{trigger}{mrn}{at:%m%d%H%M}|P|{version}||||||UNICODE UTF-8",
                f"EVN|{trigger}|{at:%Y%m%d%H%M%S}",
                "PID|" + "|".join(pid_f[1:]).rstrip("|")]
    if gp is not None:
        segments.append(f"PD1|||{GP}" if gp else 'PD1||||""')
    segments.append("PV1|" + "|".join(pv1_f[1:]).rstrip("|"))
    return ("\r".join(segments) + "\r").encode("utf-8")
