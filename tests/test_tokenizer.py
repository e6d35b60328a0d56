"""Tokenizer (gateway/hl7v2/tokenizer.py): structure, escapes, terminators, quirks, errors, speed;
and the strict diagnostics of rejected messages (gateway/hl7v2/diagnose.py)."""

from __future__ import annotations

import pytest

from gateway.errors import CharsetError, ParseError
from gateway.hl7v2 import parse, parse_text
from gateway.hl7v2.diagnose import diagnose
from gateway.hl7v2.tokenizer import DEFAULT_DELIMITERS, Delimiters, escape, split_segments, unescape
from gateway.samples import er_message

MSG = (
    "MSH|^~\\&|LAB|HSA|PIVOT|CISSS|20260101120000||ADT^A04^ADT_A01|CTRL-1|P|2.5.1|||AL|NE||UNICODE UTF-8\r"
    "EVN|A04|20260101120000\r"
    "PID|1||111^^^HSA^MR~RAMQ123^^^RAMQ&2.16.124&ISO^JHN||Doe^John^^^^^L||19800101|M|||"
    "1 Main \\T\\ Co\\S\\Suite\\F\\2\\R\\b\\E\\x^^Town\r"
    "ZPV|1||a^b&c~d\r"
)


def _msg(text: str = MSG) -> bytes:
    return text.encode("utf-8")


def test_structure_uses_hl7_numbering() -> None:
    m = parse(_msg())
    assert m.segment_ids == ["MSH", "EVN", "PID", "ZPV"]
    msh = m.msh
    assert msh.get(1) == "|"
    assert msh.get(2) == "^~\\&"
    assert msh.get(3) == "LAB"
    assert msh.get(9, 2) == "A04"
    assert msh.get(9, 3) == "ADT_A01"
    assert (m.control_id, m.message_code, m.trigger, m.structure, m.version) == ("CTRL-1", "ADT", "A04", "ADT_A01",
                                                                                   "2.5.1")
    assert m.sender == "LAB|HSA"
    pid = m.first("PID")
    assert pid is not None
    assert [r.get(1) for r in pid.reps(3)] == ["111", "RAMQ123"]
    assert pid.get(3, 4, 1, rep=2) == "RAMQ"
    assert pid.get(3, 4, 2, rep=2) == "2.16.124"
    assert pid.get(3, 4, 3, rep=2) == "ISO"
    assert pid.get(3, 4, 4, rep=2) == ""
    assert pid.get(5, 2) == "John"
    assert pid.get(5, 7) == "L"
    assert pid.get(3, rep=3) == ""
    assert pid.get(99) == ""
    assert pid.get(0) == ""
    assert pid.get(-1, -1, -1, -1) == ""
    assert pid.reps(2) == []
    assert pid.rep(2) is None
    assert pid.size == 11
    assert pid.raw(11).startswith("1 Main")
    zpv = m.first("ZPV")
    assert zpv is not None
    assert zpv.get(3, 2, 2) == "c"
    assert zpv.get(3, rep=2) == "d"
    assert m.all("DG1") == []
    assert m.first("DG1") is None


def test_escapes_are_resolved_per_subcomponent() -> None:
    pid = parse(_msg()).first("PID")
    assert pid is not None
    # \T\ & ; \S\ ^ ; \F\ | ; \R\ ~ ; \E\ \ : none of them splits anything
    assert pid.get(11, 1) == "1 Main & Co^Suite|2~b\\x"
    assert pid.get(11, 3) == "Town"
    assert pid.rep(11) is not None
    assert pid.rep(11).component(1) == "1 Main & Co^Suite|2~b\\x"  # type: ignore[union-attr]


@pytest.mark.parametrize(("raw", "expected"), [
    ("a\\.br\\b", "a\nb"),
    ("a\\.sp2\\b", "a\n\nb"),
    ("\\H\\bold\\N\\", "bold"),
    ("\\X41\\", "A"),
    ("\\XC3A9\\", "é"),                 # hex bytes decoded in the message charset (UTF-8 here)
    ("\\Zlocal\\", "\\Zlocal\\"),       # locally defined: kept verbatim
    ("\\Xzz\\", "\\Xzz\\"),             # bad hex: kept verbatim
    ("\\XC3\\", "\\XC3\\"),             # not UTF-8 on its own: kept verbatim
    ("end\\", "end\\"),                 # unterminated: kept verbatim
    ("a\\\\b", "a\\\\b"),               # empty sequence: kept verbatim
])
def test_escape_sequences(raw: str, expected: str) -> None:
    assert unescape(raw, DEFAULT_DELIMITERS, "utf-8") == expected


def test_hex_escape_uses_the_message_charset() -> None:
    text = "MSH|^~\\&|A|B|C|D|20260101||ADT^A04|1|P|2.5.1||||||{cs}\rPID|1||1||N\\XE9\\e\r"
    latin = parse(text.format(cs="8859/1").encode("latin-1")).first("PID")
    assert latin is not None
    assert latin.get(5) == "Née"
    utf8 = parse(text.format(cs="UNICODE UTF-8").encode()).first("PID")
    assert utf8 is not None
    assert utf8.get(5) == "N\\XE9\\e"


@pytest.mark.parametrize("value", ["", "plain", "a|b^c~d\\e&f", "x\\F\\y", "line1\nline2", "\\.br\\"])
def test_escape_round_trips(value: str) -> None:
    escaped = escape(value)
    assert not set("|^~&") & set(escaped)
    assert unescape(escaped, DEFAULT_DELIMITERS) == value


def test_custom_delimiters() -> None:
    text = "MSH#$*@%#APP#FAC#R#F#20260101##ADT$A04#9#P#2.5\rPID#1##a$b%c*d##x@Fy\r"
    m = parse(text.encode())
    assert m.d == Delimiters("#", "$", "*", "@", "%")
    pid = m.first("PID")
    assert pid is not None
    assert pid.get(3, 1) == "a"
    assert pid.get(3, 2, 2) == "c"
    assert pid.get(3, rep=2) == "d"
    assert pid.get(5) == "x@Fy"  # '@F@' would be the escape; '@Fy' is not terminated


@pytest.mark.parametrize("terminator", ["\r", "\n", "\r\n"])
def test_terminators_and_bom(terminator: str) -> None:
    expected = parse(_msg())
    text = MSG.replace("\r", terminator)
    for raw in (text.encode(), b"\xef\xbb\xbf" + text.encode(), b"\r\n\r\n" + text.encode() + b"\r\n\r\n"):
        m = parse(raw)
        assert m.segment_ids == expected.segment_ids
        assert [s.fields for s in m.segments] == [s.fields for s in expected.segments]


def test_literal_double_backslash_quirk() -> None:
    m = parse(MSG.replace("^~\\&", "^~\\\\&", 1).encode())
    assert m.d == DEFAULT_DELIMITERS
    assert m.msh.get(2) == "^~\\&"
    assert m.msh.get(3) == "LAB"


def test_truncation_character_v27() -> None:
    m = parse(MSG.replace("^~\\&", "^~\\&#", 1).replace("2.5.1", "2.7").encode())
    assert m.d.truncation == "#"
    assert m.msh.get(2) == "^~\\&#"
    assert m.control_id == "CTRL-1"


@pytest.mark.parametrize(("raw", "segment", "field"), [
    (b"", "MSH", None),
    (b"\r\n  \r", "MSH", None),
    (b"PID|1||x\r", "MSH", None),
    (b"MSH|^~", "MSH", 2),
    (b"MSHA^~\\&|x", "MSH", 1),
    (b"MSH|^~\\^|A", "MSH", 2),                # duplicate encoding character
    (b"MSH|^~\\|A", "MSH", 2),                 # only three
    (b"MSH|^~\\&ab|A", "MSH", 2),              # too many, letters
    (b"MSH|^~\\&|A\rpid|1\r", "", None),       # lowercase segment id
    (b"MSH|^~\\&|A\rPI|1\r", "", None),
    (b"MSH|^~\\&|A\r\xff\xfe|1\r", "", None),
])
def test_malformed_input_raises_parse_error_with_location(raw: bytes, segment: str, field: int | None) -> None:
    with pytest.raises(ParseError) as caught:
        parse(raw)
    loc = caught.value.location
    assert loc is not None
    assert loc.segment == segment
    assert loc.field == field
    assert caught.value.ack_code in ("AR", "AE")


def test_bad_segment_location_gives_the_line_not_its_text() -> None:
    with pytest.raises(ParseError) as caught:
        parse(b"MSH|^~\\&|A\rPID|1\rDoe^John|x\r")
    assert caught.value.location is not None
    assert caught.value.location.sequence == 3
    assert "Doe" not in caught.value.describe()


def test_msh2_problems_win_over_charset_problems() -> None:
    with pytest.raises(ParseError) as caught:
        parse(b"MSH|^^\\&|A|B|C|D|||ADT^A04|1|P|2.5|||||KLINGON\r")
    assert not isinstance(caught.value, CharsetError)
    assert caught.value.ack_code == "AR"


def test_parse_text_and_split_segments() -> None:
    assert split_segments("\ufeffA\r\nB\n\nC\r  \r") == ["A", "B", "C"]
    m = parse_text(MSG, "utf-8")
    assert m.charset == "utf-8"
    assert m.warnings == []
    assert len(m.segments) == 4
    assert "Doe" not in repr(m)
    assert "Doe" not in repr(m.first("PID"))


def test_samples_feed_parses() -> None:
    for i in range(20):
        m = parse(er_message(i))
        assert m.trigger == "A04"
        assert m.first("PID") is not None
        assert m.control_id


def _bench_message(i: int) -> bytes:
    """A ~1.3 KB ADT^A04: the synthetic ER registration plus AL1, IN1, OBX (with escapes) and NK1."""
    extra = ("AL1|1|DA|^Pénicilline^^^^^^^^^^^ALLERGIES|SV|Urticaire\\T\\rash~Oedème\r"
             "IN1|1|RAMQ^Régie de l'assurance maladie du Québec|RAMQ|RAMQ^^^^^^^^^^^^^^^^^^^^RAMQ|"
             "1125 Grande Allée Ouest^^Québec^QC^G1S 1E7^CA||^WPN^PH^^^418^6463323|||||20250101|20291231"
             + "|" * 40 + "\r"
             "OBX|1|TX|8661-1^Chief complaint^LN||Arrivé en ambulance\\.br\\douleur 8/10||||||F\r"
             "NK1|2|Tremblay^Paul|CHD^Enfant^HL70063|22 rue des Érables^^Lachute^QC^J8H 1A1^CA|^PRN^PH^^^450^5551111\r")
    return er_message(i) + extra.encode()



# -- diagnose (rejected messages only) -------------------------------------------------------------

def test_diagnose_reports_hl7_problems_without_values() -> None:
    text = er_message(1).decode().replace("PV1|1|E|", "PV1|1|SECRETVALUE|")
    text = text.replace("\rEVN", "\rEVN|A04|x\rFOO|1\rEVN")
    lines = text.split("\r")
    at = next(i for i, line in enumerate(lines) if line.startswith("PID|"))
    pid = lines[at].split("|")
    pid[3] = ""  # PID-3 missing
    lines[at] = "|".join(pid)
    found = diagnose("\n".join(lines))
    assert ("PID-3", "required element missing") in found
    assert ("FOO", "segment not defined in HL7 v2.5.1") in found
    assert ("PV1-2", "value not in HL7 table 0004 (warning)") in found
    assert ("EVN", "too many repetitions") in found
    flat = repr(found)
    for value in ("SECRETVALUE", "Gagnon", "Roy", "Tremblay"):
        assert value not in flat


@pytest.mark.parametrize("text", ["", "garbage", "MSH|^~\\&", "MSH|^~\\&|a|b|c|d|e||ADT^A01|1|P|9.9\rPID|1",
                                  "MSH|^~\\&|a\rPID|" + "x^" * 5000, "MSH|^~\\\\&|a|b|c|d|e||ADT^A01|1|P|2.6\rPID|1"])
def test_diagnose_never_raises(text: str) -> None:
    found = diagnose(text)
    assert isinstance(found, list)
    assert all(isinstance(a, str) and isinstance(b, str) for a, b in found)


def test_diagnose_unreadable_message_gives_parse_error() -> None:
    assert diagnose("PID|1") == [("MSH", "message does not start with an MSH segment")]
    assert diagnose("MSH|^~\\&|A\rpid|1") == [("segment 2", "invalid segment id at segment 2")]
