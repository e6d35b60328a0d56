"""Which fields a segment sent as the explicit null ``""`` (HL7 v2: "delete this value").

The builders map ``""`` as absent (mappings.datatypes.primitives.value), like an empty field; the
difference is carried beside the resources, in ``MapResult.nulls`` (``"Type/id"`` → element
paths, see mappings/merge.py for the paths), and the identity resolver applies it: empty keeps the
stored value, ``""`` deletes it. The tables are data: segment field → element paths of the
resource that segment builds (mappings/README.md, "Update semantics").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.hl7v2.tokenizer import Segment
from mappings.datatypes.primitives import HL7_NULL

FieldPaths = Mapping[int, tuple[str, ...]]

PID_PATIENT: FieldPaths = {
    5: ("name",), 7: ("birthDate",), 8: ("gender",), 11: ("address",), 13: ("telecom.home",),
    14: ("telecom.work",), 15: ("communication",), 16: ("maritalStatus",), 24: ("multipleBirth",),
    29: ("deceased",), 40: ("telecom",),
}
PD1_PATIENT: FieldPaths = {3: ("generalPractitioner",), 4: ("generalPractitioner",)}
NK1_RELATED: FieldPaths = {
    2: ("name",), 3: ("relationship",), 4: ("address",), 5: ("telecom.home",), 6: ("telecom.work",),
    8: ("period.start",), 9: ("period.end",), 15: ("gender",), 16: ("birthDate",),
}
PV1_ENCOUNTER: FieldPaths = {
    3: ("location",), 4: ("type",), 7: ("participant.ATND",), 8: ("participant.REF",),
    9: ("participant.CON",), 10: ("serviceType",), 14: ("hospitalization.admitSource",),
    17: ("participant.ADM",), 36: ("hospitalization.dischargeDisposition",), 44: ("period.start",),
    45: ("period.end",),
}
# PV2-38 mode of arrival is the Encounter's only extension (encounter-modeOfArrival): the unit
# ``extension`` is that field's alone. Another Encounter extension would need its own unit first.
PV2_ENCOUNTER: FieldPaths = {3: ("reasonCode",), 25: ("priority",), 38: ("extension",)}
# NK1-13 organisation -> Patient.contact, which no other field fills: ``""`` deletes the unit
# ``contact`` (one for all NK1s: a valued NK1-13 elsewhere in the message replaces it instead).
NK1_PATIENT: FieldPaths = {13: ("contact",)}
# Not tracked, as their unit also holds another field's value and deleting it would delete too much
# (mappings/README.md, "Update semantics"): PID-9 alias (``name``, with PID-5), PV1-11 temporary
# location (``location``, with PV1-3/PV1-6), NK1-7 contact role (``relationship``, with NK1-3).
DG1_CONDITION: FieldPaths = {5: ("onsetDateTime",), 16: ("asserter",), 19: ("recordedDate",)}
# Pharmacy: only the fields that alone fill their element (RXE-10/11/12/39 share dispenseRequest,
# RXE-32 falls back to ORC-9, the dosage is RXE + TQ1 + RXR: not tracked).
RXE_REQUEST: FieldPaths = {9: ("substitution",), 27: ("reasonCode",)}
RXD_DISPENSE: FieldPaths = {9: ("note",), 11: ("substitution",), 33: ("type",)}
RXA_ADMINISTRATION: FieldPaths = {9: ("note",), 10: ("performer",), 18: ("statusReason",), 19: ("reasonCode",)}


def add_nulls(nulls: dict[str, list[str]], resource: Mapping[str, Any], seg: Segment, table: FieldPaths) -> None:
    """Record the fields of ``seg`` sent as ``""`` against ``resource`` in ``nulls`` (MapResult.nulls)."""
    paths = explicit_nulls(seg, table)
    if paths:
        known = nulls.setdefault(f"{resource['resourceType']}/{resource['id']}", [])
        known.extend(p for p in paths if p not in known)


def explicit_nulls(seg: Segment, table: FieldPaths) -> list[str]:
    """The element paths of ``table`` whose whole field is exactly ``""`` in ``seg`` (``""`` as one
    component of a valued field, e.g. ``""^^^819``, is not a delete). Cheap: one scan of the raw
    segment, then the table only when it holds a ``""`` at all."""
    if HL7_NULL not in seg.d.field.join(seg.fields):
        return []
    out: list[str] = []
    for field, paths in table.items():
        if seg.raw(field).strip() == HL7_NULL:
            out.extend(p for p in paths if p not in out)
    return out
