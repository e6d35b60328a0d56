"""The delivery unit: one FHIR ``transaction`` Bundle per source HL7v2 message.

``message_bundle(resources, sender=…, control_id=…)`` is pure and deterministic (no wall clock,
no random): the same message always gives byte-identical JSON, so a replay is harmless.

- ``Bundle.id`` = a hash of sender + MSH-10.
- Each entry's ``fullUrl`` is ``urn:uuid:<uuid5 of Type/id>`` and every reference between entries
  (``Patient/<id>``) is rewritten to it: the server resolves them inside the transaction, whatever
  logical ids it ends up keeping (see README.md: conditional update may match a resource that
  already exists under another id).
- ``request``: ``PUT <Type>?identifier=<system>|<value>`` (conditional update on the first
  identifier having a system and a value, FHIR search escaping then URL encoding) for resources with
  an identifier; ``PUT <Type>/<id>`` otherwise. Resources keep their deterministic ``id`` in the
  body: a server honouring client ids (conditional update that matches nothing) stores them as is.
- A **retired Patient** (``active`` false with a ``replaced-by`` link: a record merged or linked
  into another person, gateway/identity) is always ``PUT Patient/<id>``: its identifiers are also
  carried by the surviving Patient, so a conditional update on them would match two resources.
  The survivor's first identifier is its own key (NAM, else the site number its id derives from),
  which no other Patient carries.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

JSON = dict[str, Any]

BUNDLE_TOPIC = "fhir.Bundle"
"""Topic name (before PIVOT_KAFKA_TOPIC_PREFIX) of the per-message transaction Bundles."""

_NAMESPACE = uuid.UUID("6f1f6a52-6f1c-5b4e-9a51-8d0c1e4f7a10")  # fixed: urn:uuids never change
_NAMESPACE_BYTES = _NAMESPACE.bytes
_string = json.encoder.encode_basestring  # the JSON text of a str


@functools.lru_cache(maxsize=16_384)  # shared resources (Organization, Practitioner, Location) recur
def entry_urn(resource_type: str, resource_id: str) -> str:
    """The ``fullUrl`` of a resource inside a bundle: a name-based UUID of ``Type/id`` (``uuid.uuid5``,
    its SHA-1 taken directly: a third of the cost)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{resource_type}/{resource_id}".encode(),
                                    usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def bundle_id(sender: str, control_id: str) -> str:
    """Stable Bundle id of one source message (32 hex digits of SHA-256 of sender|MSH-10)."""
    return hashlib.sha256(f"{sender}|{control_id}".encode()).hexdigest()[:32]


def search_escape(text: str) -> str:
    """Escape FHIR search separators (``\\``, ``,``, ``|``, ``$``) in a token's system or value."""
    out = text.replace("\\", "\\\\")
    for ch in ",|$":
        out = out.replace(ch, "\\" + ch)
    return out


def identifier_url(resource: JSON) -> str | None:
    """``Type?identifier=system|value`` of the first identifier with a system and a value, or None."""
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") and ident.get("value"):
            return f"{resource['resourceType']}?identifier={_token(str(ident['system']), str(ident['value']))}"
    return None


@functools.lru_cache(maxsize=4_096)  # mostly the shared resources' (Organization, Practitioner, Location)
def _token(system: str, value: str) -> str:
    return quote(f"{search_escape(system)}|{search_escape(value)}", safe="")


def is_retired_patient(resource: JSON) -> bool:
    """A Patient replaced by another (inactive, with a ``replaced-by`` link)."""
    links = resource.get("link") or []
    return (resource.get("resourceType") == "Patient" and resource.get("active") is False
            and any(isinstance(link, dict) and link.get("type") == "replaced-by" for link in links))


def iter_references(node: Any) -> Iterator[JSON]:
    """Every ``Reference`` object (a dict with a string ``reference``) inside a resource."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node
        for value in node.values():
            if isinstance(value, (dict, list)):
                yield from iter_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_references(item)


def message_bundle(resources: list[JSON], *, sender: str, control_id: str) -> JSON:
    """The transaction Bundle of all resources mapped from one message (see module docstring).

    Input resources are not modified. A resource listed twice (same type and id) appears once, at
    its first position, with its last content.
    """
    unique: dict[str, JSON] = {}
    for res in resources:
        unique[f"{res['resourceType']}/{res['id']}"] = res
    urns = {key: entry_urn(*key.split("/", 1)) for key in unique}
    entries = []
    for key, res in unique.items():
        body = json.loads(json.dumps(res))  # a copy of plain JSON: ~1.5x cheaper than copy.deepcopy
        for ref in iter_references(body):
            target = urns.get(ref["reference"])
            if target is not None:
                ref["reference"] = target
        url = key if is_retired_patient(body) else identifier_url(body) or key
        entries.append({"fullUrl": urns[key], "resource": body, "request": {"method": "PUT", "url": url}})
    return {"resourceType": "Bundle", "id": bundle_id(sender, control_id), "type": "transaction",
            "entry": entries}


_REFERENCE = re.compile(r'"reference":"([^"\\]*)"')  # a Reference's value in compact JSON text


def message_bundle_json(resources: list[JSON], texts: list[str], *, sender: str, control_id: str) -> str:
    """``json.dumps(message_bundle(resources, …))`` (compact, UTF-8 kept), built from ``texts``, each
    resource's own compact JSON (``gateway.envelope.dumps``): the references are rewritten on that
    text (a ``"reference":"Type/id"`` member naming an entry; element names never hold a quote)
    instead of copying and walking every resource."""
    unique: dict[str, tuple[JSON, str]] = {}
    for res, text in zip(resources, texts, strict=True):
        unique[f"{res['resourceType']}/{res['id']}"] = (res, text)
    urns = {key: entry_urn(*key.split("/", 1)) for key in unique}

    def rewrite(match: re.Match[str]) -> str:
        target = urns.get(match.group(1))
        return match.group(0) if target is None else f'"reference":"{target}"'

    entries = []
    for key, (res, text) in unique.items():
        body = _REFERENCE.sub(rewrite, text) if '"reference":"' in text else text
        url = key if is_retired_patient(res) else identifier_url(res) or key
        entries.append(f'{{"fullUrl":"{urns[key]}","resource":{body},"request":{{"method":"PUT","url":'
                       f'{_string(url)}}}}}')
    return (f'{{"resourceType":"Bundle","id":"{bundle_id(sender, control_id)}","type":"transaction",'
            f'"entry":[{",".join(entries)}]}}')


def patient_key(bundle: JSON) -> bytes | None:
    """The partition key of a bundle: the id of its first Patient entry that is not retired (else
    of its first Patient entry; None when it has none)."""
    patients = [e.get("resource") or {} for e in bundle.get("entry") or []]
    patients = [r for r in patients if r.get("resourceType") == "Patient" and r.get("id")]
    patients.sort(key=is_retired_patient)
    return str(patients[0]["id"]).encode() if patients else None
