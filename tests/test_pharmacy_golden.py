"""Golden files of the pharmacy mapping: tests/golden/pharmacy/NAME.hl7 beside NAME.expected.json.

Québec messages the project writes (French drug names with accents, UTF-8 and ISO-8859-1, NAM-only
and NAM + pharmacy number patients, DINs, CMQ prescribers, OPQ pharmacists, a DC, a whole-profile
RDS with ZPR, an injection given at the pharmacy). The expected file holds the whole MapResult.
Regenerate on purpose only: ``PIVOT_REGEN_GOLDEN=1 pytest tests/test_pharmacy_golden.py``, then
review the diff.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.fhir.models import validate
from gateway.hl7v2.tokenizer import parse
from mappings import IdentifierSystems, MapContext, MapResult, Profiles
from mappings.pharmacy import map_pharmacy

GOLDEN = Path(__file__).parent / "golden" / "pharmacy"
CASES = sorted(p.stem for p in GOLDEN.glob("*.hl7"))
REGEN = os.environ.get("PIVOT_REGEN_GOLDEN") == "1"
PROFILES = Profiles.load(None, "America/Montreal")
SYSTEMS = IdentifierSystems.load(None)
RECEIVED = datetime(2030, 1, 1, tzinfo=UTC)  # far from MSH-7: must not leak into the output


def map_file(path: Path) -> MapResult:
    msg = parse(path.read_bytes())
    return map_pharmacy(msg, MapContext(PROFILES.for_message(msg), SYSTEMS, RECEIVED))


def as_json(result: MapResult) -> dict[str, Any]:
    return {"patient_id": result.patient_id, "unmapped_segments": result.unmapped_segments,
            "resources": result.resources}


def test_golden_cases_cover_every_supported_pharmacy_message() -> None:
    kinds = set()
    for name in CASES:
        msh = (GOLDEN / f"{name}.hl7").read_bytes().split(b"\r")[0].decode("latin-1")
        kinds.add("^".join(msh.split("|")[8].split("^")[:2]))
    assert {"RDS^O13", "RDE^O11", "RAS^O17"} <= kinds


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str) -> None:
    expected_path = GOLDEN / f"{name}.expected.json"
    got = as_json(map_file(GOLDEN / f"{name}.hl7"))
    text = json.dumps(got, indent=2, ensure_ascii=False) + "\n"
    if REGEN:
        expected_path.write_text(text, encoding="utf-8")
    assert expected_path.exists(), f"no {expected_path.name}: run with PIVOT_REGEN_GOLDEN=1 and review"
    assert json.loads(text) == json.loads(expected_path.read_text(encoding="utf-8"))
    for resource in got["resources"]:
        validate(resource)
