"""MRG -> the retired Patient of an A40/A34 merge, linked both ways with the survivor (PID).

IG: no MRG->Patient map in the snapshot (MRG--Account only); we follow FHIR Patient.link:
the retired Patient (MRG-1 identifiers, MRG-7 name) is ``active=false`` with link ``replaced-by``
the survivor, and the survivor gets link ``replaces`` the retired one.
"""

from __future__ import annotations

from typing import Any

from gateway.hl7v2.tokenizer import Segment
from mappings.datatypes.demographics import xpn_to_human_name
from mappings.ids import ref_to
from mappings.segments.common import Env
from mappings.segments.patient import patient_id, patient_identifiers

JSON = dict[str, Any]


def mrg_to_retired_patient(seg: Segment, env: Env, survivor: JSON) -> JSON | None:
    """MRG -> retired Patient (identifier MRG-1, MRG-2, MRG-4; name MRG-7; active false; link
    replaced-by survivor) and adds ``replaces`` to ``survivor``. None when MRG has no identifier
    or names the survivor itself."""
    identifiers = patient_identifiers(seg, env, 1, 2, 4)
    rid = patient_id(identifiers)
    if rid is None or rid == survivor["id"]:
        return None
    retired: JSON = {"resourceType": "Patient", "id": rid, "identifier": identifiers, "active": False}
    names = [n for n in (xpn_to_human_name(r) for r in seg.reps(7)) if n is not None]
    if names:
        retired["name"] = names
    retired["link"] = [{"other": ref_to(survivor), "type": "replaced-by"}]
    survivor.setdefault("link", []).append({"other": ref_to(retired), "type": "replaces"})
    return retired
