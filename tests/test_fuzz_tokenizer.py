"""Fuzzing the parsing layer with hypothesis: random bytes and mutated messages.

Contract: ``parse`` returns a Message whose every accessor works, or raises ParseError (CharsetError
included); nothing else. The helpers fed with the same bytes (``split_messages``,
``recover_control_id``, ``build_ack`` from raw bytes) never raise. Seeds: the public corpus when
present, plus our synthetic feed. About 8 s in all (1,000 examples a test; 3,000 and ~20 s with
``PIVOT_FUZZ_STORM=100000``).
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import ParseError
from gateway.hl7v2 import Message, parse
from gateway.hl7v2.ack import build_ack, recover_control_id
from gateway.hl7v2.batch import split_messages
from gateway.hl7v2.diagnose import diagnose
from gateway.samples import er_message

CORPUS = Path(__file__).parents[1].parent / "shared" / "corpus"


def _seeds() -> list[bytes]:
    seeds = [er_message(i, charset=cs) for i, cs in enumerate(["UNICODE UTF-8", "8859/1", ""] * 2)]
    if CORPUS.is_dir():
        for path in sorted(CORPUS.rglob("*.hl7"))[::4]:
            seeds.extend(m for m in split_messages(path.read_bytes()) if len(m) < 6000)
    return seeds


SEEDS = _seeds()
TOKENS = [b"|", b"^", b"~", b"\\", b"\\\\", b"&", b"\r", b"\n", b"\r\n", b"\\F\\", b"\\X", b"\\XE9\\", b"\\.br\\",
          b"\\E", b"MSH|^~\\&|", b"\xef\xbb\xbf", b"\x0b", b"\x1c\r", b"\xc3", b"\xe9", b"\x92", b"\x00", b"PID|", b"Z"]
CHARSETS = [b"", b"ASCII", b"8859/1", b"UNICODE UTF-8", b"UTF-8", b"8859/15", b"ISO IR87", b"\xe9", b"~", b"^",
            b"UNICODE UTF-8~8859/1"]
# 1,000 examples a test in the default run; 3,000 with the full storm (PIVOT_FUZZ_STORM=100000, test_fuzz_storm.py)
EXAMPLES = 3000 if int(os.environ.get("PIVOT_FUZZ_STORM") or 0) >= 100_000 else 1000
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _exercise(msg: Message) -> None:
    """Touch every accessor of every segment, field, repetition, component and subcomponent."""
    for prop in (msg.control_id, msg.message_code, msg.trigger, msg.structure, msg.version, msg.sender,
                 msg.sending_application, msg.sending_facility):
        assert isinstance(prop, str)
    assert msg.segment_ids
    assert msg.msh.id == "MSH"
    assert msg.first(msg.segments[-1].id) is not None
    assert msg.all("PID") is not None
    for seg in msg.segments:
        repr(seg)
        for n in range(-1, seg.size + 2):
            assert isinstance(seg.raw(n), str)
            reps = seg.reps(n)
            for r, rep in enumerate(reps, 1):
                assert seg.rep(n, r) is rep
                for c in range(0, len(rep.comps) + 2):
                    assert isinstance(rep.component(c), str)
                    subs = rep.comps[c - 1] if 0 < c <= len(rep.comps) else []
                    for s in range(0, len(subs) + 2):
                        assert seg.get(n, c, s, r) == rep.get(c, s)
            assert seg.get(n, rep=len(reps) + 1) == ""


def _check(raw: bytes, assumed: str | None = None) -> None:
    error: ParseError | None = None
    try:
        msg: Message | None = parse(raw, assumed)
    except ParseError as exc:
        msg, error = None, exc
    if error is not None:
        assert error.location is not None
        ack = build_ack(error.ack_code, msg=None, raw=raw, error=error)
        assert ack.startswith(b"MSH")
        assert b"\rMSA" in ack  # in the delimiters the bytes declare
    else:
        assert msg is not None
        _exercise(msg)
        assert build_ack("AA", msg=msg).startswith(b"MSH")
    assert isinstance(recover_control_id(raw), str)
    assert all(isinstance(part, bytes) for part in split_messages(raw))


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(raw: bytes) -> None:
    _check(raw)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_after_a_header(tail: bytes) -> None:
    _check(b"MSH|^~\\&|A|B|C|D|20260101||ADT^A04|1|P|2.5.1\r" + tail)
    _check(b"MSH|^~\\&|" + tail, assumed="8859/1")


HL7ISH = st.text(alphabet="|^~\\&#\r\nPIDMSHXFSTREN.brsp0123456789ABCéÿ€ \ufeff", max_size=300)


@FUZZ
@given(HL7ISH, st.sampled_from(["utf-8", "latin-1", "cp1252", "utf-16"]))
def test_delimiter_soup_after_a_header(tail: str, encoding: str) -> None:
    raw = ("MSH|^~\\&|A|B|C|D|20260101||ADT^A04|1|P|2.5.1\r" + tail).encode(encoding, errors="replace")
    _check(raw)
    _check(b"MSH|^~\\&|A|B|C|D|20260101||ADT^A04|1|P|2.5.1|||||||8859/1\r" + tail.encode("latin-1", "replace"))


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "msh18"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 20))]
        else:
            line_end = min((i for i in (data.find(b"\r"), data.find(b"\n")) if i >= 0), default=len(data))
            fields = bytes(data[:line_end]).split(b"|")
            fields += [b""] * max(0, 18 - len(fields))
            fields[17] = draw(st.sampled_from(CHARSETS))
            data[:line_end] = b"|".join(fields)
    return bytes(data)


@FUZZ
@given(_mutated(), st.sampled_from([None, "8859/1", "cp1252", "UNICODE UTF-8"]))
def test_mutated_messages(raw: bytes, assumed: str | None) -> None:
    _check(raw, assumed)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_diagnose_never_raises_on_mutations(raw: bytes) -> None:
    found = diagnose(raw.decode("latin-1"))
    assert all(isinstance(where, str) and isinstance(problem, str) for where, problem in found)
