"""Our conformance resources (``schemas/defisante/*.json``), loaded and checked at start-up.

The CodeSystem ``defi-sante``, the StructureDefinitions (the candidate extension, the Flag and
alert profiles) and the OperationDefinitions of the four operations are FHIR R4 JSON files beside
the JSON Schema of the alert topic (``*.schema.json``, not FHIR). Each is validated, must carry
our canonical URL, and the CodeSystem must define every code the gateway emits; anything wrong
stops the start with ConfigError. They are served read-only at ``/fhir/<Type>/<id>``.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from gateway.defisante import codes
from gateway.defisante.codes import JSON
from gateway.errors import ConfigError, ValidateError
from gateway.fhir.models import validate

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "defisante"
TYPES = ("CodeSystem", "StructureDefinition", "OperationDefinition")
_EMITTED = {codes.PROGRAM, "family-involvement", *codes.ALL_ROLES, *codes.KINDS}


def _codes(concepts: list[JSON]) -> set[str]:
    out: set[str] = set()
    for c in concepts:
        out.add(str(c.get("code")))
        out |= _codes(c.get("concept") or [])
    return out


def _displays(concepts: list[JSON]) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in concepts:
        out[str(c.get("code"))] = str(c.get("display"))
        out.update(_displays(c.get("concept") or []))
    return out


@cache
def resources() -> dict[tuple[str, str], JSON]:
    """``(resourceType, id)`` → resource, for every conformance file (checked once)."""
    out: dict[tuple[str, str], JSON] = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        if path.name.endswith(".schema.json"):
            continue
        try:
            res = json.loads(path.read_text(encoding="utf-8"))
            validate(res)
        except (OSError, ValueError, ValidateError) as exc:
            raise ConfigError(f"schemas/defisante/{path.name}: not a valid FHIR resource ({type(exc).__name__})") \
                from None
        rtype, rid = res.get("resourceType"), res.get("id")
        if rtype not in TYPES or f"{rtype}-{rid}.json" != path.name:
            raise ConfigError(f"schemas/defisante/{path.name}: must be a {'/'.join(TYPES)} named <Type>-<id>.json")
        if res.get("url") != f"{codes.CANONICAL}/{rtype}/{rid}":
            raise ConfigError(f"schemas/defisante/{path.name}: url must be {codes.CANONICAL}/{rtype}/{rid}")
        out[(str(rtype), str(rid))] = res
    system = out.get(("CodeSystem", codes.PROGRAM))
    if system is None:
        raise ConfigError("schemas/defisante: the CodeSystem defi-sante is missing")
    missing = _EMITTED - _codes(system.get("concept") or [])
    if missing:
        raise ConfigError(f"schemas/defisante CodeSystem defi-sante lacks: {', '.join(sorted(missing))}")
    displays = _displays(system.get("concept") or [])
    for code, display in {**codes.KIND_DISPLAY, **codes.ROLE_DISPLAY}.items():
        if displays.get(code) != display:
            raise ConfigError(f"schemas/defisante CodeSystem defi-sante: display of {code} differs from the code's")
    for url in (codes.CANDIDATE_EXT, codes.FLAG_PROFILE, codes.ALERT_PROFILE):
        if ("StructureDefinition", url.rsplit("/", 1)[1]) not in out:
            raise ConfigError(f"schemas/defisante: StructureDefinition {url.rsplit('/', 1)[1]} is missing")
    return out


def get(rtype: str, rid: str) -> JSON | None:
    return resources().get((rtype, rid))


def of_type(rtype: str) -> list[JSON]:
    return [res for (t, _id), res in sorted(resources().items()) if t == rtype]
