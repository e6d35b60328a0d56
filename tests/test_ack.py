"""ACKs (gateway/hl7v2/ack.py): valid HL7 per hl7apy (strict, ACK structure), content, escaping, charsets,
MSA-2 recovery, ack modes, speed."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import CharsetError, Location, MapError, ParseError, PublishError, UnsupportedError
from gateway.hl7v2 import parse
from gateway.hl7v2.ack import (
    HEAD_BYTES,
    ack_modes,
    build_ack,
    new_control_id,
    recover_control_id,
    wants_ack,
)
from gateway.samples import er_message

VERSIONS = ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8"]
CODES = ["AA", "AE", "AR", "CA", "CE", "CR"]


def _original(version: str = "2.5.1", charset: str = "UNICODE UTF-8", control_id: str | None = None,
              modes: tuple[str, str] = ("", "")) -> bytes:
    raw = er_message(7, charset=charset, control_id=control_id, ack_modes=modes)
    return raw.replace(b"|P|2.5.1|", f"|P|{version}|".encode())


def _hl7apy_strict(ack: bytes, codec: str = "utf-8") -> Any:
    """Parse with hl7apy, strict validation, against the ACK message structure of the ACK's version."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import Message as ApyMessage
    from hl7apy.parser import get_message_info, parse_segments

    text = ack.decode(codec)
    encoding, _structure, version = get_message_info(text)
    # hl7apy cannot derive the structure from MSH-9 before v2.3.1 (no MSH-9.3): name it ourselves
    msg = ApyMessage("ACK", version=version, validation_level=VALIDATION_LEVEL.STRICT, encoding_chars=encoding)
    msg.children = parse_segments(text, version, encoding, VALIDATION_LEVEL.STRICT, msg.reference, find_groups=True)
    msg.validate()
    return msg


ERRORS = [
    None,
    MapError("PID-7 birth date is not a date", location=Location("PID", 1, 7)),
    ParseError("invalid segment id at segment 3", location=Location("", 3)),
    UnsupportedError("unsupported trigger", location=Location("MSH", 1, 9, 2)),
    PublishError("event log unavailable"),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("error", ERRORS, ids=["none", "map", "parse", "unsupported", "publish"])
def test_every_ack_is_valid_hl7(version: str, code: str, error: Any) -> None:
    original = parse(_original(version))
    ack = build_ack(code, msg=original, error=error)
    apy = _hl7apy_strict(ack)
    assert apy.msa.msa_1.to_er7() == code
    assert apy.msa.msa_2.to_er7() == original.control_id
    ours = parse(ack)
    assert ours.segment_ids[:2] == ["MSH", "MSA"]
    assert ("ERR" in ours.segment_ids) == (error is not None or code not in ("AA", "CA"))


def test_header_is_swapped_and_copied() -> None:
    original = parse(_original("2.6"))
    ack = parse(build_ack("AA", msg=original))
    msh = ack.msh
    assert (msh.raw(3), msh.raw(4)) == (original.msh.raw(5), original.msh.raw(6))
    assert (msh.raw(5), msh.raw(6)) == (original.msh.raw(3), original.msh.raw(4))
    assert msh.raw(9) == "ACK^A04^ACK"
    assert msh.raw(11) == "P"
    assert msh.raw(12) == "2.6"
    assert msh.raw(18) == "UNICODE UTF-8"
    assert len(msh.raw(7)) == 19
    assert msh.raw(7)[:8].isdigit()
    assert ack.control_id != original.control_id
    assert len(ack.control_id) <= 20
    assert ack.first("MSA").raw(2) == original.control_id  # type: ignore[union-attr]


def test_version_before_231_has_two_component_msh9_and_err1() -> None:
    original = parse(_original("2.3"))
    ack = parse(build_ack("AE", msg=original, error=MapError("bad date", location=Location("PID", 1, 7))))
    assert ack.msh.raw(9) == "ACK^A04"
    err = ack.first("ERR")
    assert err is not None
    assert err.raw(1) == "PID^1^7^101&Required field missing&HL70357"
    assert err.size == 1
    assert ack.first("MSA").get(3) == "bad date"  # type: ignore[union-attr]


def test_err_segment_v25() -> None:
    error = MapError("PID-7 birth date is not a date", location=Location("PID", 1, 7, 1))
    ack = parse(build_ack("AE", msg=parse(_original()), error=error))
    err = ack.first("ERR")
    assert err is not None
    assert err.raw(2) == "PID^1^7^1^1"
    assert (err.get(3, 1), err.get(3, 2), err.get(3, 3)) == ("101", "Required field missing", "HL70357")
    assert err.get(4) == "E"
    assert err.get(8) == "PID-7 birth date is not a date"


def test_error_without_known_segment_has_no_err2() -> None:
    ack = parse(build_ack("AR", msg=None, raw=b"MSH|^~\\&|A|B|C|D|x||ADT^A01|ID9|P|2.5\rpid|1",
                          error=ParseError("invalid segment id at segment 2", location=Location("", 2))))
    err = ack.first("ERR")
    assert err is not None
    assert err.raw(2) == ""
    assert err.get(3) == "100"
    assert ack.first("MSA").get(2) == "ID9"  # type: ignore[union-attr]


def test_error_code_without_error_object_is_internal_error() -> None:
    ack = parse(build_ack("CR", msg=parse(_original())))
    assert ack.first("ERR").get(3) == "207"  # type: ignore[union-attr]


def test_texts_and_control_id_are_escaped() -> None:
    text = "bad | value ^ with ~ all & kinds \\ of delimiters\nand a newline"
    original = parse(_original(control_id="A\\T\\B|"[:-1]))  # MSH-10 'A&B' sent escaped
    assert original.control_id == "A&B"
    raw_ack = build_ack("AE", msg=original, error=MapError("x"), text=text)
    ack = parse(raw_ack)
    assert ack.first("MSA").raw(2) == "A\\T\\B"  # type: ignore[union-attr]
    assert ack.first("MSA").get(2) == "A&B"  # type: ignore[union-attr]
    assert ack.first("ERR").get(8) == text.replace("\n", " ")  # type: ignore[union-attr]
    _hl7apy_strict(raw_ack)


def test_no_health_data_from_the_original() -> None:
    raw = _original()
    original = parse(raw)
    pid = original.first("PID")
    assert pid is not None
    ack = build_ack("AE", msg=original, error=MapError("PID-7 is not a date", location=Location("PID", 1, 7)))
    for value in (pid.get(5, 1), pid.get(5, 2), pid.get(7), pid.get(3, 1, rep=2)):
        assert value
        assert value.encode() not in ack


def test_ack_is_written_in_the_original_charset() -> None:
    raw = _original(charset="8859/1").replace(b"CISSS-LAURENTIDES", "Hôpital-Côté".encode("latin-1"))
    original = parse(raw)
    assert original.charset == "latin-1"
    ack = build_ack("AA", msg=original)
    assert "Hôpital-Côté".encode("latin-1") in ack
    assert b"|8859/1\r" in ack
    apy = _hl7apy_strict(ack, "latin-1")
    assert apy.msh.msh_3.to_er7() == "PIVOT"
    assert apy.msh.msh_4.to_er7() == "Hôpital-Côté"
    utf8 = build_ack("AA", msg=parse(_original().replace(b"CISSS-LAURENTIDES", "Hôpital".encode())))
    assert "Hôpital".encode() in utf8


def test_ack_without_msh18_has_none() -> None:
    original = parse(_original(charset=""))
    ack = parse(build_ack("AA", msg=original))
    assert ack.msh.size == 12


def test_defaults_when_processing_id_and_version_are_missing() -> None:
    raw = b"MSH|^~\\&|APP|FAC|RCV|RF|20260101||ADT^A04|C77\rPID|1\r"
    ack = parse(build_ack("AA", msg=parse(raw)))
    assert ack.msh.raw(11) == "P"
    assert ack.msh.raw(12) == "2.5.1"
    _hl7apy_strict(build_ack("AA", msg=parse(raw)))


def test_custom_delimiters_are_reused() -> None:
    raw = b"MSH#$*@%#APP#FAC#RCV#RF#20260101##ADT$A04#C@S@1#P#2.5\rPID#1\r"
    original = parse(raw)
    assert original.control_id == "C$1"
    ack = build_ack("AA", msg=original)
    assert ack.startswith(b"MSH#$*@%#RCV#RF#APP#FAC#")
    assert b"\rMSA#AA#C@S@1\r" in ack
    assert parse(ack).first("MSA").get(2) == "C$1"  # type: ignore[union-attr]


def test_control_ids_are_unique() -> None:
    ids = {new_control_id() for _ in range(10000)}
    assert len(ids) == 10000
    assert all(len(i) == 20 for i in ids)


# -- recover_control_id / ACK from unparsed bytes -------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    (b"MSH|^~\\&|A|B|C|D|20260101||ADT^A04|CTRL42|P|2.5\rPID|1", "CTRL42"),
    (b"\x0b\xef\xbb\xbfMSH|^~\\&|A|B|C|D|2026||ADT^A04|CTRL42|P", "CTRL42"),     # MLLP + BOM
    (b"\r\nMSH|^~\\&|A|B|C|D|2026||ADT^A04|CTRL42", "CTRL42"),                     # cut right after MSH-10
    (b"MSH|^~\\&|A|B|C|D|2026||ADT^A04|CTRL42|P|2.5||||||8859/1\rPID|\xff\xfe", "CTRL42"),
    (b"MSH|^~\\&|A|B|C|D|2026||ADT^A04|C\\F\\1^x|P", "C|1"),                      # escaped, first component
    (b"MSH#$*@%#A#B#C#D#2026##ADT$A04#X1$y#P", "X1"),
    (b"MSH|^~\\\\&|A|B|C|D|2026||ADT^A04|Q1|P", "Q1"),                            # '^~\\&' quirk
    (b"FHS|^~\\&\rBHS|^~\\&\rMSH|^~\\&|A|B|C|D|2026||ADT^A04|IN-BATCH|P", "IN-BATCH"),
    (b"MSH|^~\\&|A|B|C|D|2026||ADT^A04", ""),                                      # no MSH-10
    (b"MSH|^~\\&|A|B|C|D|2026||ADT^A04|\xc3\xa9t\xc3\xa9|P", ""),                  # not printable ASCII
    (b"PID|1||x", ""),
    (b"garbage", ""),
    (b"", ""),
    (b"MSH", ""),
    (b"MSHA^~\\&|A|B|C|D|2026||ADT^A04|CTRL42|P", ""),
])
def test_recover_control_id(raw: bytes, expected: str) -> None:
    assert recover_control_id(raw) == expected


def test_recover_control_id_from_oversize_bytes() -> None:
    head = b"MSH|^~\\&|A|B|C|D|2026||ADT^A04|BIG1|P|2.5\rOBX|1|ED|||"
    assert recover_control_id(head + b"A" * 5_000_000) == "BIG1"
    long_msh = b"MSH|^~\\&|A|B|C|D|2026||ADT^A04|" + b"Z" * HEAD_BYTES + b"|P\r"
    assert recover_control_id(long_msh) == ""  # MSH-10 cut by the window: better none than a wrong one


def test_ack_from_raw_bytes_recovers_what_it_can() -> None:
    raw = _original(version="2.4", charset="8859/1")[:200] + b"\xff"
    error = CharsetError("bytes invalid", location=Location("MSH", 1, 18))
    ack = build_ack("AE", msg=None, raw=raw, error=error)
    parsed = parse(ack)
    assert parsed.first("MSA").get(2) == parse(_original(charset="8859/1")).control_id  # type: ignore[union-attr]
    assert parsed.msh.raw(12) == "2.4"
    assert parsed.msh.raw(18) == "8859/1"
    assert parsed.msh.raw(5) == "URGENCE"
    _hl7apy_strict(ack, "latin-1")


def test_ack_from_garbage_is_still_valid_hl7() -> None:
    ack = build_ack("AR", msg=None, raw=b"\x00\x01 not hl7", error=ParseError("not HL7", location=Location("MSH", 1)))
    parsed = parse(ack)
    assert parsed.first("MSA").get(1) == "AR"  # type: ignore[union-attr]
    assert parsed.first("MSA").get(2) == ""  # type: ignore[union-attr]
    assert parsed.msh.raw(9) == "ACK^^ACK"
    assert parsed.msh.raw(12) == "2.5.1"


def test_unknown_ack_code_is_refused() -> None:
    with pytest.raises(ValueError, match="0008"):
        build_ack("OK", msg=None)


# -- ack modes --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("modes", "expected"), [
    (("", ""), ("", "")), (("AL", "NE"), ("AL", "NE")), (("er", " su "), ("ER", "SU")), (("XX", "AL"), ("", "AL")),
])
def test_ack_modes(modes: tuple[str, str], expected: tuple[str, str]) -> None:
    assert ack_modes(parse(_original(modes=modes))) == expected


@pytest.mark.parametrize(("mode", "code", "expected"), [
    ("AL", "CA", True), ("AL", "AE", True), ("NE", "CA", False), ("NE", "AR", False),
    ("ER", "CA", False), ("ER", "AA", False), ("ER", "CE", True), ("ER", "AR", True),
    ("SU", "CA", True), ("SU", "AA", True), ("SU", "AE", False), ("SU", "CR", False),
    ("", "AA", True), ("", "AE", True),
])
def test_wants_ack(mode: str, code: str, expected: bool) -> None:
    assert wants_ack(mode, code) is expected
