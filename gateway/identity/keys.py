"""Which identifiers identify a person, in what order a Patient lists them, and the demographic key.

- **NAM** (RAMQ health insurance number, system :data:`NAM_SYSTEM`): an identity key when
  :func:`mappings.datatypes.identifiers.valid_nam` accepts it. An invalid one is dropped (see
  README.md, "Invalid NAM").
- **Site record number**: an identifier outside the NAM system whose type is MR, MRT or PI, or
  that has no type at all (many feeds leave CX-5 empty), plus the identifier the mapping derived
  the Patient id from. Its system names the assigning authority (mappings/README.md), so
  ``system|value`` identifies one record at one site.
- Anything else (driver's licence, SIN, account numbers…) is carried on the Patient but never used
  to find or link anyone.

The demographic key (family name, first given name, birth date, sex) only *lists* possible
duplicates; it is stored as a SHA-256 digest, never as text.
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Any

from mappings.datatypes.identifiers import MR_TYPES, NAM_SYSTEM, identifier_key, type_code, valid_nam
from mappings.ids import stable_id

JSON = dict[str, Any]


def key_of(ident: JSON) -> str:
    """``system|value`` of an Identifier."""
    return identifier_key(ident)


def is_nam(ident: JSON) -> bool:
    """An identifier in the NAM system (valid or not)."""
    return ident.get("system") == NAM_SYSTEM


def is_valid_nam(ident: JSON) -> bool:
    """A NAM that may serve as an identity key."""
    return is_nam(ident) and valid_nam(str(ident.get("value", "")))


def is_identity_key(ident: JSON) -> bool:
    """A valid NAM, or a site record number (type MR/MRT/PI, or no type at all)."""
    if is_nam(ident):
        return is_valid_nam(ident)
    if not ident.get("system") or not ident.get("value"):
        return False
    return "type" not in ident or type_code(ident) in MR_TYPES


def nam_person_id(nam: str) -> str:
    """The Patient id of the person holding ``nam`` (the mapping's id rule: hash of system|value)."""
    return stable_id("Patient", f"{NAM_SYSTEM}|{nam}")


def ordered(identifiers: list[JSON], first: str) -> list[JSON]:
    """Deterministic order: the NAM, then the identifier ``first`` (the key the id derives from),
    then the others by system and value. The first one is what the delivery's conditional update
    matches on (gateway/delivery/bundle.py), so it must be the person's own key."""

    def rank(ident: JSON) -> tuple[int, str, str]:
        head = 0 if is_nam(ident) else 1 if key_of(ident) == first else 2
        return head, str(ident.get("system", "")), str(ident.get("value", ""))

    return sorted(identifiers, key=rank)


def _norm(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text)
    return "".join(c for c in folded if c.isalpha()).upper()


def demographic_digest(patient: JSON) -> str | None:
    """SHA-256 of normalised family name + first given name + birth date + sex, or None when one
    of them is missing (accents, case, spaces and hyphens do not matter)."""
    birth, gender = patient.get("birthDate"), patient.get("gender")
    family = given = ""
    for name in patient.get("name") or []:
        if isinstance(name, dict) and name.get("family"):
            family = _norm(str(name["family"]))
            given = _norm(str((name.get("given") or [""])[0]))
            break
    if not (family and given and birth and gender):
        return None
    text = "\x1f".join((family, given, str(birth)[:10], str(gender)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
