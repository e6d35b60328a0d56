"""Console units: its configuration file, the bounded log reads (embedded vs the generic read_all
path, one contract), the MSH peek of quarantined messages, the month series."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.console.config import load_config, parse_config
from gateway.console.feeds import _ack_codes, _msh
from gateway.console.logtail import LastSeen, last_seen, recent
from gateway.console.series import month_index, month_text, monthly, relative
from gateway.defisante.register import Visit
from gateway.errors import ConfigError
from gateway.eventlog.base import OutRecord, Record
from gateway.eventlog.embedded import EmbeddedLog


def test_the_packaged_configuration_loads() -> None:
    cfg = load_config()
    assert cfg.silent_after_minutes == 30
    assert cfg.threshold("ANY|SENDER") == 30
    assert all(m.reference.startswith("Practitioner/") for m in cfg.case_managers)
    assert cfg.sites["CSSS-SOMMETS-HSA"] == "Hôpital Sainte-Agathe"


@pytest.mark.parametrize(("data", "message"), [
    ([], "expected a JSON object"),
    ({"feeds": {"silent_after_minutes": 0}}, "silent_after_minutes must be a number > 0"),
    ({"feeds": {"senders": [{"sender": "no-bar"}]}}, "needs sender as 'MSH-3|MSH-4'"),
    ({"feeds": {"senders": [{"sender": "A|B"}, {"sender": "A|B"}]}}, "listed twice"),
    ({"feeds": {"senders": [{"sender": "A|B", "silent_after_minutes": True}]}}, "must be a number"),
    ({"sites": {"X": 1}}, "sites must map"),
    ({"case_managers": [{"reference": "Patient/1"}]}, "reference must be Practitioner"),
])
def test_a_bad_configuration_is_refused_naming_the_entry(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data, "site.json")


def test_a_deployment_file_overrides_the_packaged_one(tmp_path: Path) -> None:
    path = tmp_path / "console.json"
    path.write_text(json.dumps({"feeds": {"silent_after_minutes": 5, "senders": [
        {"sender": "LAB|CHU", "label": "Labo", "silent_after_minutes": 240}]}}), encoding="utf-8")
    cfg = load_config(path)
    assert (cfg.threshold("LAB|CHU"), cfg.threshold("OTHER|X"), cfg.label("LAB|CHU")) == (240, 5, "Labo")
    path.write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "missing.json")


class ReadAllOnly:
    """An EventLog seen only through read_all (what the Kafka log offers): the generic path."""

    def __init__(self, log: EmbeddedLog) -> None:
        self.log = log

    def read_all(self, topic: str) -> list[Record]:
        return self.log.read_all(topic)


def test_recent_reads_the_same_records_on_both_paths(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.sqlite")
    try:
        for n in range(30):
            topic = "t.dead" if n % 3 == 0 else "t.in"
            stage = "unsupported" if n % 2 == 0 else "parse"
            raw = f"MSH|^~\\&|APP|FAC{n % 2}|X|Y|||ADT^A{n:02d}|c{n}|P|2.5\r".encode()
            log.append(OutRecord(topic=topic, value=raw,
                                 headers={"sender": f"APP|FAC{n % 2}", "stage": stage, "n": str(n)}))
        generic = ReadAllOnly(log)
        for kwargs in ({}, {"limit": 4}, {"head_bytes": 12}, {"where_stage": "unsupported"}):
            for topic in ("t.in", "t.dead"):
                fast = recent(log, topic, 0, **kwargs)  # type: ignore[arg-type]
                slow = recent(generic, topic, 0, **kwargs)  # type: ignore[arg-type]
                assert [(r.id, r.headers, r.head) for r in fast.records] == \
                    [(r.id, r.headers, r.head) for r in slow.records], (topic, kwargs)
                assert fast.truncated == slow.truncated
        assert [r.headers["n"] for r in recent(log, "t.in", 0, limit=2).records] == ["29", "28"]
        assert recent(log, "t.in", 0, limit=2).truncated is True
        assert recent(log, "t.in", 2**62).records == []  # nothing appended in the future
        assert last_seen(log, "t.in") == last_seen(generic, "t.in")  # type: ignore[arg-type]
        assert set(last_seen(log, "t.in")) == {"APP|FAC0", "APP|FAC1"}
    finally:
        log.close()


def test_last_seen_follows_the_log_incrementally(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log.sqlite")
    try:
        tracker, generic = LastSeen(), LastSeen()
        log.append(OutRecord(topic="t.in", value=b"x", headers={"sender": "A|1"}))
        log.append(OutRecord(topic="t.other", value=b"x", headers={"sender": "C|3"}))
        first = tracker.get(log, "t.in")
        assert set(first) == {"A|1"}
        log.append(OutRecord(topic="t.in", value=b"x", headers={"sender": "B|2"}))
        log.append(OutRecord(topic="t.in", value=b"x", headers={"sender": "A|1"}))
        second = tracker.get(log, "t.in")
        assert set(second) == {"A|1", "B|2"}
        assert second["A|1"] >= first["A|1"]
        assert second == last_seen(log, "t.in") == generic.get(ReadAllOnly(log), "t.in")  # type: ignore[arg-type]
    finally:
        log.close()


def test_the_quarantine_reads_only_msh_9_and_12() -> None:
    raw = b"MSH|^~\\&|APP|FAC|||20260101||ADT^A99^ADT_A01|C1|P|2.5.1\rPID|||secret"
    assert _msh(raw) == ("ADT^A99^ADT_A01", "2.5.1")
    assert _msh(b"\x0bMSH#^~\\&#A#B#C#D#E#F#ORU^R01#X#P#2.3") == ("ORU^R01", "2.3")
    assert _msh(b"MSH|^~\\&|A|B|C|D|E|F|<script>alert(1)</script>|X") == ("scriptalert1script", "")
    assert _msh(b"not hl7") == ("", "")


def test_ack_codes_come_from_the_error_tree() -> None:
    codes = _ack_codes()
    assert (codes["1200"], codes["1210"], codes["1300"], codes["1400"], codes["1600"]) == ("AR", "AE", "AR", "AE", "AR")


def _visit(arrival: str) -> Visit:
    return Visit("e", "p", "p", "finished", arrival, None, "", None, "S", (), ())


def test_month_series_relative_to_enrollment() -> None:
    assert month_text(month_index("2025-03-31T23:00:00-04:00") or 0) == "2025-03"
    assert month_index("2025-13") is None
    assert month_index("garbage") is None
    start = month_index("2025-06") or 0
    visits = [_visit("2025-05-02"), _visit("2025-05-20"), _visit("2025-06-01"), _visit("2025-06-10"),
              _visit("2025-09-01")]
    # month 0 is split at the enrollment day: 06-01 is before the 5th, 06-10 after
    series = relative([("2025-06-05T10:00:00Z", start + 3, visits), ("2025-07-15T00:00:00Z", start + 1, [])],
                      before=2, after=4)
    assert [(p["offset"], p.get("part", ""), p["visits"], p["clients"]) for p in series] == [
        (-2, "", 0, 2), (-1, "", 2, 2), (0, "before", 1, 2), (0, "after", 1, 2), (1, "", 0, 1), (2, "", 0, 1),
        (3, "", 1, 1), (4, "", 0, 0)]
    assert [p["after"] for p in series] == [False, False, False, True, True, True, True, True]
    assert series[1]["rate"] == 1.0
    assert series[-1]["rate"] is None
    months = monthly(visits, start - 1, start + 1, "2025-06-05T10:00:00Z")
    assert [(m["month"], m.get("part", ""), m["visits"], m["after"]) for m in months] == [
        ("2025-05", "", 2, False), ("2025-06", "before", 1, False), ("2025-06", "after", 1, True),
        ("2025-07", "", 0, True)]
