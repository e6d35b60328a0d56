"""split_messages (gateway/hl7v2/batch.py): single, back-to-back, FHS/BHS batches, MLLP frames; bytes kept intact."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ParseError
from gateway.hl7v2 import parse
from gateway.hl7v2.batch import split_messages, strip_mllp

CORPUS = Path(__file__).parents[1].parent / "shared" / "corpus"
PY_HL7_BATCH = CORPUS / "other" / "python-hl7" / "pyhl7-ADT_A04-batch-sample_file.hl7"


def _msg(cid: str, name: str = "Tremblay", charset: str = "UNICODE UTF-8", term: str = "\r") -> str:
    return term.join([
        f"MSH|^~\\&|APP|FAC|PIVOT|CISSS|20260101||ADT^A04^ADT_A01|{cid}|P|2.5.1||||||{charset}",
        "EVN|A04|20260101",
        f"PID|1||{cid}^^^HSA^MR||{name}^Jean",
    ]) + term


def test_single_message_is_returned_as_is() -> None:
    raw = _msg("C1").encode()
    assert split_messages(raw) == [raw]


@pytest.mark.parametrize("term", ["\r", "\n", "\r\n"])
def test_back_to_back_messages(term: str) -> None:
    parts = [_msg(f"C{i}", term=term).encode() for i in range(3)]
    data = b"".join(parts)
    assert split_messages(data) == parts
    assert [parse(p).control_id for p in split_messages(data)] == ["C0", "C1", "C2"]


def test_each_message_keeps_its_own_bytes_and_charset() -> None:
    latin = _msg("L1", "Côté", "8859/1").encode("latin-1")
    utf8 = _msg("U1", "Gélinas").encode("utf-8")
    out = split_messages(latin + utf8 + latin)
    assert out == [latin, utf8, latin]
    assert parse(out[0]).first("PID").get(5) == "Côté"  # type: ignore[union-attr]
    assert parse(out[1]).first("PID").get(5) == "Gélinas"  # type: ignore[union-attr]


def test_nested_and_repeated_batches_drop_header_and_trailer_segments() -> None:
    m = [_msg(f"B{i}").encode() for i in range(4)]
    data = (b"FHS|^~\\&|APP|FAC|||20260101\r"
            b"BHS|^~\\&|APP|FAC|||20260101\r" + m[0] + m[1] + b"BTS|2\r"
            b"BHS|^~\\&|APP|FAC|||20260101\r" + m[2] + b"BTS|1\r"
            b"FTS|2\r"
            b"BHS|^~\\&|APP|FAC\n" + m[3] + b"BTS|1\n")
    assert split_messages(data) == m


def test_python_hl7_batch_file() -> None:
    if not PY_HL7_BATCH.is_file():
        pytest.skip(f"public corpus not found at {CORPUS}")
    data = PY_HL7_BATCH.read_bytes()
    out = split_messages(data)
    assert len(out) == 1
    start = data.index(b"\rMSH|") + 1
    end = data.index(b"BTS|")
    assert out[0] == data[start:end]  # the message's own bytes, nothing decoded or rewritten
    msg = parse(out[0])
    assert msg.control_id == "12334456778890"
    assert msg.segment_ids == ["MSH", "EVN", "PID", "PD1", "NK1", "PV1"]


def test_mllp_frames() -> None:
    a, b = _msg("M1").encode(), _msg("M2").encode()
    data = b"\x0b" + a + b"\x1c\x0d" + b"\r\n" + b"\x0b" + b + b"\x1c\x0d"
    assert split_messages(data) == [a, b]
    assert strip_mllp(data) == [a, b]
    assert strip_mllp(a) == [a]


def test_truncated_mllp_frame_is_kept() -> None:
    a, b = _msg("M1").encode(), _msg("M2").encode()
    assert split_messages(b"\x0b" + a + b"\x1c\r\x0b" + b[:40]) == [a, b[:40]]


def test_bom_before_messages_is_dropped() -> None:
    a, b = _msg("M1").encode(), _msg("M2").encode()
    assert split_messages(b"\xef\xbb\xbf" + a + b"\xef\xbb\xbf" + b) == [a, b]


def test_junk_is_returned_not_dropped() -> None:
    a = _msg("M1").encode()
    out = split_messages(b"HELLO WORLD\r" + a + b"BTS|1\rZZZ|stray\r")
    assert out == [b"HELLO WORLD\r", a, b"ZZZ|stray\r"]
    with pytest.raises(ParseError):
        parse(out[0])
    with pytest.raises(ParseError):
        parse(out[2])


@pytest.mark.parametrize("data", [b"", b"\r\n\r\n", b"\x0b\x1c\x0d", b"FHS|^~\\&\rFTS|0\r"])
def test_nothing_to_split(data: bytes) -> None:
    assert split_messages(data) == []


def test_segment_named_like_a_boundary_inside_text_does_not_split() -> None:
    a = _msg("M1").replace("EVN|A04|20260101", "NTE|1||see MSH|x BTS|1").encode()
    assert split_messages(a + a) == [a, a]
    mshx = b"MSHX|not a header\r"  # 4-letter token: not a boundary
    assert split_messages(a + mshx) == [a + mshx]
