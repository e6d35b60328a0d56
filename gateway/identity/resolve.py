"""One mapped message through the identity index: find or create the person, link, merge, order.

:class:`Resolution` runs inside one index transaction (gateway.identity.IdentityResolver):

1. each PID group's Patient → its person (:meth:`Resolution._person_for`): a valid NAM names the
   person ``Patient/<hash of the NAM>``; site record numbers find the person they already belong
   to; site-only persons found beside a NAM are linked into the NAM person;
2. each MRG (A40/A34) → the records it names are merged into the group's person (:meth:`_merge`);
3. references to the mapped Patients are rewritten to the persons; cancels become reversals of
   the stored Encounter; person-scoped resources older than what was applied are dropped;
4. the person's Patient: per element the newest statement of any message or site (survivorship.py),
   every identifier, links; the other person-scoped resources are merged the same way;
5. possible duplicates: the person joins the cluster of its look-alikes (same demographic digest,
   not two NAMs), at most one Flag per record (clusters.py);
6. what links and merges re-published is journaled under the message, so a second resolution of
   the same message publishes the same resources again.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime
from typing import Any

from gateway.errors import Location, MapError
from gateway.eventlog.state.identity import IdentityIndex, Stored
from gateway.identity import bodies, survivorship
from gateway.identity.clusters import Clusters
from gateway.identity.keys import (
    is_identity_key,
    is_nam,
    is_valid_nam,
    key_of,
    nam_person_id,
    ordered,
)
from gateway.identity.reversal import CANCELS, matches_cancel, reverse
from mappings import MapResult, merge, stable_id
from mappings.codemaps import codemap
from mappings.datatypes.identifiers import NAM_SYSTEM
from mappings.pharmacy import PHARMACY_TRIGGERS
from mappings.segments.condition import listed_in_diagnosis
from mappings.segments.patient import patient_key

JSON = dict[str, Any]
log = logging.getLogger("pivot.identity")

SHARED_TYPES = frozenset({"Organization", "Practitioner", "PractitionerRole", "Location"})
_ORDER = ("Patient", "RelatedPerson", "Organization", "Practitioner", "PractitionerRole", "Location", "Encounter",
          "Condition", "Flag")
_RANK = {t: i for i, t in enumerate(_ORDER)}
_LAST = len(_ORDER) + 1  # Provenance and anything unknown
_REMOVED = codemap("diagnosis-action").concept("D")  # a diagnosis no longer in its visit's DG1 set
SKIP_UNSEEN = True
"""Work that cannot change anything for a message resolved the first time is skipped (False: done
anyway; tests compare both)."""


def event_ms(text: str) -> int | None:
    """Epoch milliseconds of a FHIR instant (None when empty or unreadable)."""
    if not text:
        return None
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


class Resolution:
    """The identity work of one message (see module docstring); :meth:`run` returns the new result."""

    def __init__(self, index: IdentityIndex, result: MapResult) -> None:
        self.ix = index
        self.result = result
        self.message = f"{result.sender}|{result.control_id}"
        self.ev = event_ms(result.event_time)
        self.trigger = result.trigger.strip().upper()
        first_meta = result.resources[0].get("meta") if result.resources else None
        self.meta: JSON | None = first_meta if isinstance(first_meta, dict) else None
        self.refs: dict[str, str] = {}
        self.side: dict[tuple[str, str], JSON] = {}
        self.main: dict[tuple[str, str], JSON] = {}
        self.inherited: dict[str, list[Stored]] = {}
        self.groups: list[tuple[JSON, str]] = []
        self.first: bool | None = None  # its Provenance(s) new to the index: the message never resolved before

    # -- the steps ---------------------------------------------------------------------------------
    def run(self) -> MapResult:
        self.ix.preload([(r["resourceType"], str(r["id"])) for r in self.result.resources  # one query
                         if r["resourceType"] not in SHARED_TYPES and r["resourceType"] != "Provenance"])
        patients = [r for r in self.result.resources if r["resourceType"] == "Patient"]
        for seq, patient in enumerate((p for p in patients if p.get("active") is not False), 1):
            self.groups.append((patient, self._person_for(patient, seq)))
        for seq, retired in enumerate((p for p in patients if p.get("active") is False), 1):
            self._merge(retired, seq)
        for patient, person in self.groups:
            self.refs[f"Patient/{patient['id']}"] = f"Patient/{self.ix.final(person)}"
        others = [r for r in self.result.resources if r["resourceType"] != "Patient"]
        others.sort(key=lambda r: r["resourceType"] != "Encounter")  # cancels may rename an Encounter
        for res in others:
            if res["resourceType"] not in SHARED_TYPES and res["resourceType"] != "Provenance":
                self._dependent(res)
        persons = list(dict.fromkeys(self.ix.final(p) for _m, p in self.groups))
        for person in persons:
            self._patient(person)
            self._unsent_kin(person)
            self._unsent_diagnoses(person)
        for person in persons:
            self._duplicates(person)
        for res in others:
            if res["resourceType"] in SHARED_TYPES:
                self.main[(res["resourceType"], res["id"])] = bodies.rewrite(res, self.refs)
            elif res["resourceType"] == "Provenance":
                self.main[("Provenance", res["id"])] = self._provenance(res)
        if not (self.first and SKIP_UNSEEN):  # a first resolution journaled only what is in self.side
            for rtype, rid in self.ix.journal(self.message):
                stored = self.ix.resource(rtype, rid)
                if stored is not None and (rtype, rid) not in self.side:
                    self.side[(rtype, rid)] = stored.body
        return replace(self.result, resources=self._output(),
                       patient_id=persons[0] if persons else self.result.patient_id)

    def _output(self) -> list[JSON]:
        """By type (the mapping's order, Provenance last); within a type the message's own resources
        first (rules read "the Encounter" of a message), then what links and merges re-published."""
        merged = {**self.main, **{k: v for k, v in self.side.items() if k not in self.main}}
        position = {key: n for n, key in enumerate(merged)}

        def rank(key: tuple[str, str]) -> tuple[int, int, int]:
            res = merged[key]
            retired = res["resourceType"] == "Patient" and res.get("active") is False
            return _RANK.get(key[0], _LAST), int(retired), position[key]

        return [merged[k] for k in sorted(merged, key=rank)]

    # -- persons -----------------------------------------------------------------------------------
    def _usable(self, identifiers: list[JSON], where: Location) -> list[JSON]:
        """The identifiers without invalid NAMs (dropped: README.md, "Invalid NAM")."""
        out = []
        for ident in identifiers:
            if is_nam(ident) and not is_valid_nam(ident):
                log.warning("invalid NAM dropped sender=%s control_id=%s at %s", self.result.sender,
                            self.result.control_id, where)
                continue
            out.append(ident)
        if not out:
            raise MapError("no usable patient identifier (the NAM is invalid)", hl7_code="102", location=where)
        return out

    @staticmethod
    def _nam(identifiers: list[JSON], where: Location) -> str | None:
        nams = sorted({str(i["value"]) for i in identifiers if is_nam(i)})
        if len(nams) > 1:
            raise MapError("two different NAMs for one patient", hl7_code="205", location=where)
        return nams[0] if nams else None

    @staticmethod
    def _keys(identifiers: list[JSON]) -> list[str]:
        keys = [key_of(i) for i in identifiers if is_identity_key(i)]
        keyed = patient_key(identifiers)
        if keyed is not None:
            keys.append(key_of(keyed))
        return list(dict.fromkeys(keys))

    def _found(self, keys: list[str]) -> list[str]:
        found = self.ix.persons_of_keys(keys)
        return list(dict.fromkeys(self.ix.final(found[k]) for k in keys if k in found))

    def _nam_of(self, person: str) -> str | None:
        row = self.ix.person(person)
        return row.nam if row is not None else None

    def _person_for(self, patient: JSON, seq: int) -> str:
        """The person of one PID group (creating, linking by NAM); MapError 205 on a conflict."""
        where = Location("PID", seq, 3)
        idents = self._usable(patient.get("identifier") or [], where)
        nam = self._nam(idents, where)
        keys = self._keys(idents)
        found = self._found(keys)
        if nam is not None:
            if any((other := self._nam_of(f)) is not None and other != nam for f in found):
                raise MapError("NAM differs from the NAM on record for this patient's site identifier",
                               hl7_code="205", location=where)
            target = nam_person_id(nam)
            self.ix.add_person(target, f"{NAM_SYSTEM}|{nam}", nam)
            target = self.ix.final(target)
            for other_person in found:
                self._absorb(target, other_person)
        elif len(found) > 1:
            raise MapError("site identifiers belong to different patients (merge them with an A40)",
                           hl7_code="205", location=where)
        elif found:
            target = found[0]
        else:
            keyed = patient_key(idents)
            assert keyed is not None  # idents is not empty
            target = stable_id("Patient", key_of(keyed))
            self.ix.add_person(target, key_of(keyed), None)
            target = self.ix.final(target)
        self._add_identifiers(target, idents, keys, old=False)
        return target

    def _add_identifiers(self, person: str, identifiers: list[JSON], keys: list[str], *, old: bool) -> None:
        """Union ``identifiers`` into the person's; ``use: old`` sticks once set (merged-away MRNs);
        a stale message adds identifiers but does not rewrite the known ones."""
        stored = self.ix.resource("Patient", person)
        stale = stored is not None and self.ev is not None and self.ev < stored.event_ms
        for ident in identifiers:
            key = key_of(ident)
            existing = self.ix.identifier(person, key)
            body = dict(existing[1]) if existing is not None and stale else dict(ident)
            if (old and not is_nam(ident)) or (existing is not None and existing[1].get("use") == "old"):
                body = {"use": "old", **{k: v for k, v in body.items() if k != "use"}}
            self.ix.put_identifier(person, key, key in keys, body)

    def _merge(self, retired: JSON, seq: int) -> None:
        """MRG (A40/A34): the records MRG-1 names join the person of their PID group."""
        where = Location("MRG", seq, 1)
        survivor_ref = next((link["other"]["reference"] for link in retired.get("link") or []
                             if link.get("type") == "replaced-by"), "")
        group = next((p for m, p in self.groups if f"Patient/{m['id']}" == survivor_ref), None)
        if group is None:
            return
        idents = self._usable(retired.get("identifier") or [], where)
        nam = self._nam(idents, where)
        keys = self._keys(idents)
        found = self._found(keys)
        if nam is not None:
            holder = nam_person_id(nam)
            self.ix.add_person(holder, f"{NAM_SYSTEM}|{nam}", nam)
            found = list(dict.fromkeys([*found, self.ix.final(holder)]))
        survivor = self.ix.final(group)
        nams = {n for n in (self._nam_of(p) for p in [survivor, *found]) if n is not None}
        if len(nams) > 1:
            raise MapError("the merged records have different NAMs", hl7_code="205", location=where)
        for other in found:
            survivor = self.ix.final(survivor)
            if other == survivor:
                continue
            if self._nam_of(other) is not None and self._nam_of(survivor) is None:
                self._absorb(other, survivor)  # the NAM is authoritative: its person survives
                survivor = other
            else:
                self._absorb(survivor, other)
        survivor = self.ix.final(survivor)
        rid = str(retired["id"])
        if not found and self.ix.person(rid) is None:
            keyed = patient_key(idents)
            self.ix.add_person(rid, key_of(keyed) if keyed else rid, None, survivor=survivor)
            record = bodies.retired_patient({**retired, "identifier": idents}, survivor)
            self._publish(Stored("Patient", rid, survivor, self.ev or 0, record))
        self._add_identifiers(survivor, idents, keys, old=True)
        # what the mapped MRG Patient stands for: its record, else the record of the person MRG-1 named
        named = [p for p in [rid, *found] if self.ix.resource("Patient", p) is not None and p != survivor]
        self.refs[f"Patient/{rid}"] = f"Patient/{named[0] if named else survivor}"

    def _absorb(self, survivor: str, other: str) -> None:
        """``other`` joins ``survivor``: identifiers move, its records become retired Patients linked
        ``replaced-by`` the survivor, its Encounters and other resources are re-published under it."""
        if survivor == other:
            return
        row = self.ix.person(other)
        snapshot = [body for _k, _key, body in self.ix.identifiers(other)]
        self.ix.move_identifiers(other, survivor)
        self.ix.retire(other, survivor)
        for record in self.inherited.pop(other, []):
            self._inherit(survivor, record)
        own_record = False
        for stored in self.ix.resources_of(other):
            if stored.rtype == "Flag":
                continue
            if stored.rtype == "Patient":
                own_record = own_record or stored.id == other
                if stored.id == other:
                    self._inherit(survivor, stored)
                body = bodies.retired_patient(stored.body, survivor)
            else:
                body = bodies.rewrite(stored.body, {f"Patient/{other}": f"Patient/{survivor}"})
            self._publish(Stored(stored.rtype, stored.id, survivor, stored.event_ms, body))
        if not own_record:
            base: JSON = {"resourceType": "Patient", "id": other,
                          "identifier": ordered(snapshot, row.key if row else "")}
            if self.meta:
                base["meta"] = self.meta
            self._publish(Stored("Patient", other, survivor, self.ev or 0, bodies.retired_patient(base, survivor)))
        self._clusters().leave(other)
        log.info("identity: patient %s joined %s (trigger=%s control_id=%s)", other, survivor, self.trigger,
                 self.result.control_id)

    def _inherit(self, person: str, stored: Stored) -> None:
        """A record ``person`` absorbed: its elements join the person's Patient (each at its own time)."""
        self.inherited.setdefault(person, []).append(stored)

    def _clusters(self) -> Clusters:
        """The look-alike work (clusters.py) for this message, built where it is used: kept as an
        attribute it would hold this Resolution through ``publish`` — a reference cycle that only the
        garbage collector frees, with the message's resources: ~200 objects a message, swept ~70 ms
        at a time in the MLLP listener (an ACK waits for that)."""
        return Clusters(self.ix, self._publish, event_time=self.result.event_time, event_ms=self.ev or 0,
                        meta=self.meta, control_id=self.result.control_id)

    def _publish(self, stored: Stored) -> None:
        """A resource re-published because of a link or merge (journaled under this message)."""
        self.ix.put_resource(stored)
        self.ix.add_journal(self.message, stored.rtype, stored.id)
        self.side[(stored.rtype, stored.id)] = stored.body

    def _provenance(self, prov: JSON) -> JSON:
        """The Provenance with its targets as the message was first resolved (history, not state),
        and which elements the message said about each of them (survivorship.asserted)."""
        targets = {ref["reference"] for ref in bodies.references(prov.get("target") or [])}
        now = {src: dst for src, dst in self.refs.items() if src in targets and src != dst}
        first, new = self.ix.first_provenance_refs(prov["id"], now)
        self.first = new and self.first is not False
        said = survivorship.asserted(self.result.resources, self.result.nulls)
        if said:
            prov = {**prov, "extension": [*(prov.get("extension") or []), *said]}
        return bodies.rewrite(prov, first)

    # -- resources of a person ---------------------------------------------------------------------
    def _nulls(self, mapped: JSON) -> list[str]:
        return list(self.result.nulls.get(f"{mapped['resourceType']}/{mapped['id']}", []))

    def _dependent(self, mapped: JSON) -> None:
        """An Encounter, Condition, RelatedPerson, pharmacy resource…: references to the person,
        cancels as reversals, merged element by element onto the stored version (survivorship.py);
        dropped when older than what was applied and changing nothing (README.md, "Survivorship")."""
        res = bodies.rewrite(mapped, self.refs)
        owner = bodies.first_patient_ref(res)
        if owner is None:
            self.main[(res["resourceType"], res["id"])] = res
            return
        person = self.ix.final(owner)
        rtype = res["resourceType"]
        whole = False
        if rtype == "Encounter" and self.trigger in CANCELS:
            target = self.ix.resource("Encounter", res["id"]) or self._cancel_target(person, res)
            if target is not None:
                if target.id != res["id"]:
                    self.refs[f"Encounter/{res['id']}"] = f"Encounter/{target.id}"
                res, whole = reverse(self.trigger, target.body, res), True
        kept = survivorship.resource(self.ix, res, self._nulls(mapped), self.ev, self.trigger, whole=whole)
        if not kept.publish:
            log.info("identity: stale %s %s dropped (trigger=%s control_id=%s)", rtype, res["id"], self.trigger,
                     self.result.control_id)
            return
        self.ix.put_resource(Stored(rtype, res["id"], person, kept.event_ms, kept.body, kept.times))
        self.main[(rtype, res["id"])] = kept.body

    def _unsent_kin(self, person: str) -> None:
        """NK1 is a repeating set: a message that sends NK1s replaces the set its site sent before;
        the person's RelatedPersons of that site it no longer lists become inactive (per element, so
        only when the message is the newest word on them). Other sites' kin are never touched."""
        sent = {r["id"] for r in self.result.resources if r["resourceType"] == "RelatedPerson"}
        if not sent or self.meta is None:
            return
        site = str(self.meta.get("source", "")).split("#", 1)[0]
        for rid in self.ix.record_ids(person, "RelatedPerson"):
            stored = None if rid in sent else self.ix.resource("RelatedPerson", rid)  # sent: not decoded
            if stored is None:
                continue
            source = str((stored.body.get("meta") or {}).get("source", "")).split("#", 1)[0]
            if stored.body.get("active") is False or source != site:
                continue
            gone = {"resourceType": "RelatedPerson", "id": stored.id, "meta": self.meta, "active": False}
            kept = survivorship.resource(self.ix, gone, [], self.ev, self.trigger)
            if kept.publish and kept.body.get("active") is False:
                self.ix.put_resource(Stored("RelatedPerson", stored.id, person, kept.event_ms, kept.body, kept.times))
                self.main[("RelatedPerson", stored.id)] = kept.body

    def _unsent_diagnoses(self, person: str) -> None:
        """DG1 is a repeating set per visit: a message that sends DG1s for a visit replaces that visit's
        diagnoses (Encounter.diagnosis, the ``diagnosis`` unit); the person's Conditions of that visit it
        no longer lists become entered-in-error, as DG1-21 D makes them (so the visit's old diagnosis no
        longer reads as the patient's) — only when the message is newer than the last one that sent
        the Condition (an older set does not undo a newer one). A message without DG1 for a visit keeps
        them all."""
        visits: set[str] = set()
        sent: set[str] = set()
        for res in self.result.resources:
            if res["resourceType"] == "Condition" and isinstance(res.get("encounter"), dict):
                ref = str(res["encounter"].get("reference", ""))
                visits.add(self.refs.get(ref, ref))
                sent.add(str(res["id"]))
        if not visits or self.meta is None:
            return
        for rid in self.ix.record_ids(person, "Condition"):
            stored = None if rid in sent else self.ix.resource("Condition", rid)  # sent: not decoded
            if stored is None or not listed_in_diagnosis(stored.body) or \
                    str((stored.body.get("encounter") or {}).get("reference", "")) not in visits:
                continue
            if self.ev is not None and self.ev < stored.event_ms:  # a later message listed it: its set stands
                continue
            gone = {"resourceType": "Condition", "id": rid, "meta": self.meta, "verificationStatus": _REMOVED}
            kept = survivorship.resource(self.ix, gone, [], self.ev, self.trigger)
            if kept.publish and not listed_in_diagnosis(kept.body):
                self.ix.put_resource(Stored("Condition", rid, person, kept.event_ms, kept.body, kept.times))
                self.main[("Condition", rid)] = kept.body

    def _cancel_target(self, person: str, cancel: JSON) -> Stored | None:
        """The visit a cancel without visit number names: the person's latest matching Encounter."""
        if "identifier" in cancel:
            return None
        candidates = [s for s in self.ix.resources_of(person, "Encounter")
                      if matches_cancel(self.trigger, s.body, cancel)]
        return max(candidates, key=lambda s: (s.event_ms, s.id)) if candidates else None

    def _patient(self, person: str) -> None:
        """The person's Patient: per element, the newest statement across this message, the stored
        version and the records it absorbed (survivorship.py); every identifier; ``replaces`` links."""
        mapped = [(m, self._nulls(m)) for m, p in self.groups if self.ix.final(p) == person]
        stored = self.ix.resource("Patient", person)
        pharmacy = self.result.message_code.strip().upper() in PHARMACY_TRIGGERS
        kept = survivorship.person(self.ix, person, mapped, self.ev, pharmacy=pharmacy,
                                   inherited=self.inherited.get(person, []))
        row = self.ix.person(person)
        identifiers = ordered([body for _k, _key, body in self.ix.identifiers(person)], row.key if row else "")
        retired = [rid for rid in self.ix.record_ids(person) if rid != person]
        body = bodies.person_patient(kept.body, person, identifiers, retired)
        changed = stored is None or merge.content(body) != merge.content(stored.body)
        if not (changed or kept.publish):
            return
        self.ix.put_resource(Stored("Patient", person, person, kept.event_ms, body, kept.times))
        self.main[("Patient", person)] = body

    # -- possible duplicates -----------------------------------------------------------------------
    def _duplicates(self, person: str) -> None:
        """The person into its look-alike cluster (clusters.py): at most one Flag per record."""
        current = self.main.get(("Patient", person))
        if current is None:
            stored = self.ix.resource("Patient", person)
            current = stored.body if stored is not None else {}
        self._clusters().place(person, current, self._nam_of(person) is not None)
