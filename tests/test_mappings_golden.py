"""Golden files: tests/golden/NAME.hl7 beside NAME.expected.json (our own synthetic messages).

The expected file holds the whole MapResult (resources, patient_id, unmapped_segments). Mapping is
a pure function of the message and configuration, so nothing volatile needs removing. Regenerate
on purpose only: ``PIVOT_REGEN_GOLDEN=1 pytest tests/test_mappings_golden.py`` then review the diff.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.fhir.models import validate
from gateway.hl7v2.tokenizer import parse, parse_text, split_segments
from mappings import IdentifierSystems, MapContext, MapResult, Profiles, map_message

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.hl7"))
REGEN = os.environ.get("PIVOT_REGEN_GOLDEN") == "1"
PROFILES = Profiles.load(GOLDEN / "sender-profiles.json", "America/Montreal")
SYSTEMS = IdentifierSystems.load(GOLDEN / "identifier-systems.json")
RECEIVED = datetime(2030, 1, 1, tzinfo=UTC)  # deliberately far from MSH-7: must not leak into output


def map_file(path: Path) -> MapResult:
    """Parse like the gateway (sender profile charset when MSH-18 is empty) and map."""
    raw = path.read_bytes()
    head = parse_text(split_segments(raw.decode("latin-1"))[0])
    msg = parse(raw, PROFILES.for_message(head).charset)
    return map_message(msg, MapContext(PROFILES.for_message(msg), SYSTEMS, RECEIVED))


def as_json(result: MapResult) -> dict[str, Any]:
    return {"patient_id": result.patient_id, "unmapped_segments": result.unmapped_segments,
            "resources": result.resources}


def test_golden_cases_cover_every_supported_trigger() -> None:
    triggers = set()
    for name in CASES:
        msh = (GOLDEN / f"{name}.hl7").read_bytes().split(b"\r")[0].decode("latin-1")
        triggers.add(msh.split("|")[8].split("^")[1])
    assert {"A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A11", "A12", "A13", "A28", "A31",
            "A40"} <= triggers


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str) -> None:
    expected_path = GOLDEN / f"{name}.expected.json"
    got = as_json(map_file(GOLDEN / f"{name}.hl7"))
    text = json.dumps(got, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    if REGEN:
        expected_path.write_text(text, encoding="utf-8")
    assert expected_path.exists(), f"no {expected_path.name}: run with PIVOT_REGEN_GOLDEN=1 and review"
    expected = json.loads(expected_path.read_text(encoding="utf-8"))
    assert json.loads(text) == expected
    for resource in got["resources"]:
        validate(resource)
