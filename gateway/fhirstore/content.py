"""What the store compares and keeps of a resource: its checked type and id, digest and body text.

A resource's *body text* is the compact JSON (``envelope.dumps``: no spaces, UTF-8 kept, keys in the
resource's own order) of all its elements but resourceType, id and meta; ``versions.body`` is the
stamped head (resourceType, id, meta) followed by that text. The change-detection digest (scheme
:data:`DIGEST_SCHEME`) is made of the body text and the canonical (sorted) text of meta without
versionId, lastUpdated and source (``meta.source`` names the message that carried a resource: a
shared Organization resent by every message gets no new version).

The store sink hands the ``fhir.*`` envelopes' resource text as the mapping worker wrote it
(:func:`prepare_text`): when it starts with resourceType, id and meta, the body text is a slice of it
and the digest is computed without parsing the resource; only a resource that changed is parsed
(index rows, stamped copy, listeners). Key order counts in the digest, so a digest that differs
from the stored one is confirmed (:func:`same_content`: equal canonical texts) before a new version is
written: the same content in another key order (an HTTP client, a store written before scheme 3)
changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from gateway.envelope import dumps
from gateway.errors import StoreError
from gateway.fhirstore.params import supported

DIGEST_SCHEME = "3"
"""How ``resources.hash`` is computed (store_meta ``digest``): a store written under another scheme is
rehashed once on open (``FhirStore``), so its unchanged resources keep comparing equal."""
ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_VOLATILE_META = ("versionId", "lastUpdated")
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_HEAD = ("resourceType", "id", "meta")
_TEXT_HEAD = re.compile(r'\{"resourceType":"([A-Za-z]{1,64})","id":"([A-Za-z0-9\-.]{1,64})","meta":')
_DECODER = json.JSONDecoder()


def check_type(rtype: str) -> None:
    if not supported(rtype):
        raise StoreError("resource type not supported by this server", status=405, issue_code="not-supported")


def check_id(rid: Any) -> str:
    if not isinstance(rid, str) or ID_RE.fullmatch(rid) is None:
        raise StoreError("invalid resource id", status=400, issue_code="value")
    return rid


def content_of(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without the server-managed ``meta.versionId``/``meta.lastUpdated``."""
    meta = resource.get("meta")
    if not isinstance(meta, dict) or not any(k in meta for k in _VOLATILE_META):
        return resource
    rest = {k: v for k, v in meta.items() if k not in _VOLATILE_META}
    out = {k: v for k, v in resource.items() if k != "meta"}
    if rest:
        out["meta"] = rest
    return out


def _meta_text(content: dict[str, Any]) -> str:
    """Canonical text of ``content``'s meta without source ("" when nothing is left)."""
    meta = content.get("meta")
    if isinstance(meta, dict):
        kept = {k: v for k, v in meta.items() if k != "source"}
        return _CANONICAL.encode(kept) if kept else ""
    return _CANONICAL.encode(meta) if "meta" in content else ""


def _digest(base: str, meta: str) -> bytes:
    return hashlib.blake2b(f"{base}\n{meta}".encode(), digest_size=16).digest()


def digest(content: dict[str, Any]) -> bytes:
    """Change-detection digest of a resource's content (module docstring)."""
    return _digest(dumps({k: v for k, v in content.items() if k not in _HEAD}), _meta_text(content))


def canonical(content: dict[str, Any]) -> tuple[str, str]:
    """Canonical (sorted) texts of ``content``'s elements but its head, and of its meta without source."""
    return _CANONICAL.encode({k: v for k, v in content.items() if k not in _HEAD}), _meta_text(content)


def same_content(prepared: Prepared, stored_body: str) -> bool:
    """Whether ``prepared``'s content equals a stored version's whatever their key order (meta.source
    and the volatile meta ignored). Cheap when their body texts differ in length: compact texts of one
    content in any key order have one length (both written by ``dumps``, or a producer as compact)."""
    head = _TEXT_HEAD.match(stored_body)
    if head is not None:
        try:
            _meta, at = _DECODER.raw_decode(stored_body, head.end())
        except ValueError:
            return False
        if (2 if at == len(stored_body) - 1 else len(stored_body) - at) != len(prepared.base):
            return False
    return canonical(prepared.content) == canonical(content_of(json.loads(stored_body)))


class Prepared:
    """One resource to write: checked, digested, its body text ready; its content (volatile meta
    removed) parsed from its text only when asked for."""

    __slots__ = ("_content", "_meta", "_text", "base", "digest", "rid", "rtype")

    def __init__(self, rtype: str, rid: str, digest_: bytes, base: str, content: dict[str, Any] | None,
                 text: str = "", meta: dict[str, Any] | None = None) -> None:
        self.rtype, self.rid, self.digest, self.base = rtype, rid, digest_, base
        self._content, self._text, self._meta = content, text, meta

    @property
    def content(self) -> dict[str, Any]:
        if self._content is None:
            resource = _loads(self._text)
            if (resource.get("resourceType"), resource.get("id"), resource.get("meta")) != (
                    self.rtype, self.rid, self._meta):
                raise StoreError("resource JSON with repeated resourceType, id or meta", status=400,
                                 issue_code="structure")
            self._content = content_of(resource)
        return self._content


def prepare(resource: dict[str, Any]) -> Prepared:
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise StoreError("resource without resourceType", status=400, issue_code="structure")
    check_type(rtype)
    rid = check_id(resource.get("id"))
    content = content_of(resource)
    base = dumps({k: v for k, v in content.items() if k not in _HEAD})
    return Prepared(rtype, rid, _digest(base, _meta_text(content)), base, content)


def prepare_text(text: str) -> Prepared:
    """:func:`prepare` of a resource's compact JSON text (module docstring): not parsed when it
    starts with resourceType, id and meta (in that order), parsed first otherwise."""
    head = _TEXT_HEAD.match(text)
    if head is None or not text.endswith("}"):
        return prepare(_loads(text))
    rtype, rid = head.group(1), head.group(2)
    check_type(rtype)
    try:
        meta, at = _DECODER.raw_decode(text, head.end())
    except ValueError:
        return prepare(_loads(text))
    end = len(text) - 1  # its closing brace
    if not isinstance(meta, dict) or any(k in meta for k in _VOLATILE_META) or not (
            at == end or text.startswith(",", at)):
        return prepare(_loads(text))
    base = "{}" if at == end else "{" + text[at + 1:]
    return Prepared(rtype, rid, _digest(base, _meta_text({"meta": meta})), base, None, text, meta)


def _loads(text: str) -> dict[str, Any]:
    try:
        resource = json.loads(text)
    except ValueError as exc:
        raise StoreError("resource is not valid JSON", status=400, issue_code="structure") from exc
    if not isinstance(resource, dict):
        raise StoreError("resource is not a JSON object", status=400, issue_code="structure")
    return resource


def body_text(stored: dict[str, Any], base: str) -> str:
    """The JSON text of ``stored`` (a stamped resource) from its body text: resourceType, id and meta
    first, then the body text — no second serialisation."""
    head = (f'{{"resourceType":{_CANONICAL.encode(stored["resourceType"])},"id":{_CANONICAL.encode(stored["id"])},'
            f'"meta":{_CANONICAL.encode(stored["meta"])}')
    return head + ("}" if base == "{}" else "," + base[1:])
