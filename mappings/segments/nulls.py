"""Which fields a segment sent as the explicit null ``""`` (HL7 v2: "delete this value").

The builders map ``""`` as absent (mappings.datatypes.primitives.value), like an empty field; the
difference is carried beside the resources, in ``MapResult.nulls`` (``"Type/id"`` → element
paths, see mappings/merge.py for the paths), and the identity resolver applies it: empty keeps the
stored value, ``""`` deletes it. The tables are data: segment field → element paths of the
resource that segment builds (mappings/README.md, "Update semantics").
"""

from __future__ import annotations

from collections.abc import Mapping

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
PV2_ENCOUNTER: FieldPaths = {3: ("reasonCode",), 25: ("priority",)}
DG1_CONDITION: FieldPaths = {5: ("onsetDateTime",), 16: ("asserter",), 19: ("recordedDate",)}


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
