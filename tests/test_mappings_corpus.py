"""Conformance over the shared corpus (../shared/corpus; skipped when absent).

1. Every ADT message with a supported trigger maps without crashing and every resource validates.
   Messages whose content is really broken may raise MapError: they are listed in BROKEN with the
   reason (three LinuxForHealth RDE extracts without MSH-7).
2. Against the Microsoft FHIR-Converter expected bundles, the Patient and Encounter fields both
   sides produce agree, except for the differences listed in MS_DIFFERENCES (and README.md).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import MapError, StructureError, UnsupportedError
from gateway.fhir.models import validate
from gateway.hl7v2 import Message, parse
from gateway.hl7v2.batch import split_messages
from mappings import IdentifierSystems, MapContext, MapResult, Profiles, check_supported, map_message

# two corpus senders send no EVN (ADT_A01/ADT_A39 require it): their profiles relax it (README)
PROFILES = Profiles.load(Path(__file__).parent / "golden" / "corpus-sender-profiles.json", "America/Montreal")
SYSTEMS = IdentifierSystems.load(None)
SOURCES = ("microsoft-fhir-converter/hl7v2", "linuxforhealth-hl7v2-fhir-converter/hl7v2", "other/*")
# file name -> reason; these may raise MapError (content really broken)
BROKEN: dict[str, str] = {
    name: "MSH-7 (date/time of message) is empty and there is no EVN: AE 101, as for ADT"
    for name in ("lfh-RDE_O11-dosageInstructionTestDoseRangeRXE.hl7",
                 "lfh-RDE_O11-dosageInstructionTestRateRatioRXE.hl7",
                 "lfh-RDE_O11-testMedicationRequestCategoryRequesterAndDispenseRequest.hl7")
}
# refused by the required structure (mappings/codemaps/required-structure.json): AE, dead letter
BROKEN.update({
    "docs-sample-ADT_A01-simhosp.hl7": "cut after PID-4: no PID-5 and no PV1 (ADT_A01 requires both): AE 100",
    **{name: "PID-5 (patient name, required in every version) is empty: AE 101" for name in (
        "lfh-ADT_A03-testAdtA03AllSegmentsAndMultipleGroups.hl7",
        "lfh-ADT_A03-testAdtA03AllSegmentsNoGroupsPresent.hl7",
        "lfh-ADT_A03-testAdtA03MinimumPlusInsuranceGroup.hl7", "lfh-ADT_A03-testAdtA03MinimumPlusProcedureGroup.hl7",
        "lfh-ADT_A03-testAdtA03MininumSegments.hl7", "lfh-ADT_A34-validateHappyPathADT_A34WithMRG.hl7",
        "lfh-ADT_A40-validateHappyPathADT_A40WithMRG.hl7", "lfh-ADT_A40-validateTwoMRGs.hl7",
        "iz-openpixpdq-ADT_A31-L776.hl7")},
})
# Intended differences with the Microsoft expected outputs (file, field) -> reason
MS_DIFFERENCES: dict[tuple[str, str], str] = {
    **{(f"ADT-{t}-0{n}", "encounter"): "A28/A31 are person messages: we build no Encounter from their PV1"
       for t in ("A28", "A31") for n in (1, 2)},
    **{(f"ADT-A40-0{n}", "patient"): "MS emits no Patient for A40; we emit survivor + retired (Patient.link)"
       for n in (1, 2)},
    ("ADT-A05-01", "period.start"): "MS takes PV2-8 (expected admit date) as start; we do not",
    ("ADT-A14-01", "period.start"): "MS takes PV2-8 (expected admit date) as start; we do not",
    ("ADT01-28", "period.start"): "PV1-44 empty: for A01/A04 we take EVN-6/EVN-2 as the start, MS leaves it out",
    **{(f"ADT-{t}-02", "status"): "PV1-45 valued: finished (IG PV1-45 row 'IF PV1-45 VALUED'); MS keeps the trigger's"
       for t in ("A04", "A05", "A14")},
}


def corpus_messages(corpus: Path) -> list[tuple[str, bytes]]:
    out = []
    for pattern in SOURCES:
        for path in sorted(corpus.glob(f"{pattern}/*.hl7")):
            for i, raw in enumerate(split_messages(path.read_bytes())):
                out.append((f"{path.name}#{i}", raw))
    return out


def supported(raw: bytes) -> Message | None:
    msg = parse(raw)
    try:
        check_supported(msg)
    except UnsupportedError:
        return None
    return msg


def map_one(msg: Message) -> MapResult:
    return map_message(msg, MapContext(PROFILES.for_message(msg), SYSTEMS, datetime(2026, 1, 1, tzinfo=UTC)))


def test_every_supported_corpus_message_maps_and_validates(corpus: Path) -> None:
    mapped = 0
    for name, raw in corpus_messages(corpus):
        msg = supported(raw)
        if msg is None:
            continue
        try:
            result = map_one(msg)
        except MapError:
            assert name.split("#")[0] in BROKEN, f"{name} raised MapError"
            continue
        for res in result.resources:
            validate(res)
        assert result.patient_id is not None, name
        mapped += 1
    assert mapped >= 65  # 80 supported ADT messages in the corpus today, 12 refused by the required structure


def _structure_error(msg: Message) -> StructureError | None:
    try:
        map_one(msg)
    except StructureError as exc:
        return exc
    except MapError:
        return None
    return None


def test_corpus_refusals_are_the_listed_structure_errors(corpus: Path) -> None:
    """Each message the required structure refuses is listed in BROKEN; without its sender profile's
    relaxation an EVN-less sender's message is refused too."""
    refused = set()
    for name, raw in corpus_messages(corpus):
        msg = supported(raw)
        exc = _structure_error(msg) if msg is not None else None
        if exc is not None:
            assert exc.hl7_code in ("100", "101")
            assert exc.location is not None
            refused.add(name.split("#")[0])
    assert refused == {n for n, why in BROKEN.items() if "AE 10" in why and "MSH-7" not in why}
    msg = supported((corpus / "microsoft-fhir-converter" / "hl7v2" / "ADT04-251.hl7").read_bytes())
    assert msg is not None
    with pytest.raises(StructureError) as caught:
        map_message(msg, MapContext(Profiles.load(None, "America/Montreal").for_message(msg), SYSTEMS,
                                    datetime(2026, 1, 1, tzinfo=UTC)))
    assert (caught.value.hl7_code, str(caught.value.location)) == ("100", "EVN")


def _instant(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text and "T" in text else None


def _first(resources: list[dict[str, Any]], rtype: str, **where: Any) -> dict[str, Any] | None:
    return next((r for r in resources if r["resourceType"] == rtype
                 and all(r.get(k, True) == v for k, v in where.items())), None)


def compare(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> dict[str, str]:
    """Field -> short description of the difference (no field values beyond the corpus' fictitious ones)."""
    diffs: dict[str, str] = {}
    op, tp = _first(ours, "Patient", active=True), _first(theirs, "Patient")
    if (op is None) != (tp is None):
        diffs["patient"] = f"ours {op is not None}, theirs {tp is not None}"
    elif op is not None and tp is not None:
        ov = {i["value"] for i in op.get("identifier", [])}
        tv = {i.get("value") for i in tp.get("identifier", [])}
        if not ov <= tv:
            diffs["identifier"] = "ours not a subset of theirs"
        on, tn = op.get("name", [{}])[0], tp.get("name", [{}])[0]
        # MS adds XPN-15 (called by) to the given names: ours must be a prefix of theirs
        given = on.get("given", [])
        if on.get("family") != tn.get("family") or given != tn.get("given", [])[: len(given)]:
            diffs["name"] = "family/given differ"
        for key in ("birthDate", "gender"):
            if op.get(key) != tp.get(key):
                diffs[key] = "differ"
    oe, te = _first(ours, "Encounter"), _first(theirs, "Encounter")
    if (oe is None) != (te is None):
        diffs["encounter"] = f"ours {oe is not None}, theirs {te is not None}"
    elif oe is not None and te is not None:
        if oe["class"].get("code") != te.get("class", {}).get("code"):
            diffs["class"] = "differ"
        if oe["status"] != te.get("status"):
            diffs["status"] = "differ"
        # MS renders times in its own configured offset: compare the instants
        if _instant(oe.get("period", {}).get("start")) != _instant(te.get("period", {}).get("start")):
            diffs["period.start"] = "differ"
    return diffs


def test_patient_and_encounter_agree_with_microsoft_expected(corpus: Path) -> None:
    base = corpus / "microsoft-fhir-converter"
    compared = 0
    unexpected: dict[tuple[str, str], str] = {}
    for expected in sorted((base / "expected").glob("ADT*-expected.json")):
        stem = expected.name.removesuffix("-expected.json")
        msg = supported((base / "hl7v2" / f"{stem}.hl7").read_bytes())
        if msg is None:
            continue
        theirs = [e["resource"] for e in json.loads(expected.read_text(encoding="utf-8"))["entry"]]
        for field, what in compare(map_one(msg).resources, theirs).items():
            if (stem, field) not in MS_DIFFERENCES:
                unexpected[(stem, field)] = what
        compared += 1
    assert compared >= 30
    assert unexpected == {}


@pytest.mark.parametrize("key", sorted(MS_DIFFERENCES))
def test_listed_differences_are_still_real(corpus: Path, key: tuple[str, str]) -> None:
    base = corpus / "microsoft-fhir-converter"
    stem, field = key
    msg = supported((base / "hl7v2" / f"{stem}.hl7").read_bytes())
    assert msg is not None
    theirs = [e["resource"] for e in json.loads((base / "expected" / f"{stem}-expected.json").read_text())["entry"]]
    assert field in compare(map_one(msg).resources, theirs)
