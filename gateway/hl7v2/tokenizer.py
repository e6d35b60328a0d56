"""Lean HL7v2 ER7 tokenizer: the hot path (hl7apy is the reference, see tests/test_differential.py).

``parse(raw)`` decodes per MSH-18 (charset.py), splits segments on CR, LF or CRLF, fields on the
MSH-1 separator and keeps each field's raw text; repetitions, components and subcomponents are
split and unescaped on first access and cached. Every error is a :class:`ParseError`.

Numbering follows HL7: ``seg.get(3)`` is PID-3; for MSH, ``get(1)`` is the field separator and
``get(2)`` the encoding characters, as in the standard.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.errors import Location, ParseError
from gateway.hl7v2.charset import UTF8_BOM, decode

_SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
BATCH_SEGMENTS = frozenset({"FHS", "FTS", "BHS", "BTS"})


@dataclass(frozen=True, slots=True)
class Delimiters:
    """MSH-1 and MSH-2: field, component, repetition, escape, subcomponent (and v2.7 truncation)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def encoding_characters(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


DEFAULT_DELIMITERS = Delimiters()


def unescape(text: str, d: Delimiters) -> str:
    """Resolve \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh..\\ and \\.br\\ (newline). Unknown escapes stay verbatim."""
    esc = d.escape
    if not esc or esc not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch != esc:
            out.append(ch)
            i += 1
            continue
        end = text.find(esc, i + 1)
        if end < 0:
            out.append(text[i:])
            break
        seq = text[i + 1 : end]
        rep = _escape_value(seq, d)
        if rep is None:
            out.append(text[i : end + 1])
        else:
            out.append(rep)
        i = end + 1
    return "".join(out)


def _escape_value(seq: str, d: Delimiters) -> str | None:
    simple = {"F": d.field, "S": d.component, "T": d.subcomponent, "R": d.repetition, "E": d.escape}
    if seq in simple:
        return simple[seq]
    if seq == ".br":
        return "\n"
    if seq.startswith("X") and len(seq) > 1 and len(seq) % 2 == 1:
        try:
            return bytes.fromhex(seq[1:]).decode("latin-1")
        except ValueError:
            return None
    return None


class Rep:
    """One repetition of a field: components, each a list of subcomponents (unescaped)."""

    __slots__ = ("comps", "raw")

    def __init__(self, raw: str, d: Delimiters):
        self.raw = raw
        self.comps: list[list[str]] = [
            [unescape(s, d) for s in c.split(d.subcomponent)] if d.subcomponent else [unescape(c, d)]
            for c in raw.split(d.component)
        ]

    def get(self, comp: int = 1, sub: int = 1) -> str:
        """Component ``comp``, subcomponent ``sub`` (1-based), '' when absent."""
        if comp < 1 or comp > len(self.comps):
            return ""
        subs = self.comps[comp - 1]
        return subs[sub - 1] if 0 < sub <= len(subs) else ""

    def component(self, comp: int) -> str:
        """The whole component (subcomponents joined back with '&'), unescaped."""
        if comp < 1 or comp > len(self.comps):
            return ""
        return "&".join(self.comps[comp - 1])

    def __bool__(self) -> bool:
        return self.raw != ""


class Segment:
    """One segment: id, raw field strings, and lazily split repetitions."""

    __slots__ = ("_cache", "_offset", "d", "fields", "id", "index")

    def __init__(self, sid: str, fields: list[str], d: Delimiters, index: int):
        self.id = sid
        self.fields = fields  # fields[0] is the id; for MSH fields[1] is MSH-2
        self.d = d
        self.index = index
        self._offset = 1 if sid == "MSH" or sid in BATCH_SEGMENTS else 0
        self._cache: dict[int, list[Rep]] = {}

    def raw(self, n: int) -> str:
        """Raw (escaped) text of field n, '' when absent."""
        if self._offset and n == 1:
            return self.d.field
        i = n - self._offset
        return self.fields[i] if 0 < i < len(self.fields) else ""

    @property
    def size(self) -> int:
        """Number of the last field present."""
        return len(self.fields) - 1 + self._offset

    def reps(self, n: int) -> list[Rep]:
        """Repetitions of field n (empty list when the field is empty)."""
        cached = self._cache.get(n)
        if cached is not None:
            return cached
        raw = self.raw(n)
        if self._offset and n in (1, 2):
            reps = [Rep(raw, Delimiters(component="\x00", repetition="\x00", escape="", subcomponent=""))]
        elif raw == "":
            reps = []
        else:
            reps = [Rep(r, self.d) for r in raw.split(self.d.repetition)]
        self._cache[n] = reps
        return reps

    def rep(self, n: int, rep: int = 1) -> Rep | None:
        reps = self.reps(n)
        return reps[rep - 1] if 0 < rep <= len(reps) else None

    def get(self, n: int, comp: int = 1, sub: int = 1, rep: int = 1) -> str:
        """Field n, repetition ``rep``, component ``comp``, subcomponent ``sub``; unescaped, '' if absent."""
        r = self.rep(n, rep)
        return r.get(comp, sub) if r is not None else ""


class Message:
    """A tokenized message: segments in order, delimiters, charset used, decode warnings."""

    __slots__ = ("charset", "d", "segments", "text", "warnings")

    def __init__(self, segments: list[Segment], d: Delimiters, charset: str, warnings: list[str], text: str):
        self.segments = segments
        self.d = d
        self.charset = charset
        self.warnings = warnings
        self.text = text

    def first(self, sid: str) -> Segment | None:
        for seg in self.segments:
            if seg.id == sid:
                return seg
        return None

    def all(self, sid: str) -> list[Segment]:
        return [s for s in self.segments if s.id == sid]

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    @property
    def control_id(self) -> str:
        return self.msh.get(10)

    @property
    def message_code(self) -> str:
        return self.msh.get(9, 1)

    @property
    def trigger(self) -> str:
        return self.msh.get(9, 2)

    @property
    def structure(self) -> str:
        return self.msh.get(9, 3)

    @property
    def version(self) -> str:
        return self.msh.get(12, 1)

    @property
    def sending_application(self) -> str:
        return self.msh.get(3, 1)

    @property
    def sending_facility(self) -> str:
        return self.msh.get(4, 1)

    @property
    def sender(self) -> str:
        """Sending application + facility: the key, with MSH-10, for duplicate detection."""
        return f"{self.sending_application}|{self.sending_facility}"

    @property
    def segment_ids(self) -> list[str]:
        return [s.id for s in self.segments]


def split_segments(text: str) -> list[str]:
    """Segment strings of a decoded message; a BOM and blank lines are dropped."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return [s for s in _SEGMENT_SPLIT.split(text) if s.strip()]


def parse_text(text: str, charset: str = "utf-8", warnings: list[str] | None = None) -> Message:
    """Tokenize an already decoded message."""
    lines = split_segments(text)
    if not lines:
        raise ParseError("empty message", location=Location("MSH", 1))
    head = lines[0]
    if not head.startswith("MSH") or len(head) < 8:
        raise ParseError("message does not start with an MSH segment", location=Location("MSH", 1))
    fsep = head[3]
    if fsep.isalnum() or fsep in " \t":
        raise ParseError("invalid field separator in MSH-1", location=Location("MSH", 1, 1))
    enc_end = head.find(fsep, 4)
    enc = head[4:enc_end] if enc_end >= 0 else head[4:]
    if len(enc) == 5 and enc[4] == enc[2]:
        enc = enc[:4]  # literal '^~\\&' quirk: a doubled escape character
    if len(enc) < 4 or len(set(enc + fsep)) != len(enc) + 1 or any(c.isalnum() or c in " \t" for c in enc):
        raise ParseError("invalid encoding characters in MSH-2", location=Location("MSH", 1, 2),
                         hl7_code="102")
    d = Delimiters(fsep, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) > 4 else "")
    segments: list[Segment] = []
    for i, line in enumerate(lines):
        fields = line.split(fsep)
        sid = fields[0]
        if not _SEGMENT_ID.match(sid):
            raise ParseError(f"invalid segment id at segment {i + 1}", location=Location(f"#{i + 1}", i + 1))
        if i == 0:
            fields[1] = enc
        segments.append(Segment(sid, fields, d, i))
    return Message(segments, d, charset, warnings or [], text)


def parse(raw: bytes, assumed_charset: str | None = None) -> Message:
    """Decode (MSH-18, else the sender profile's charset, else UTF-8 then cp1252) and tokenize."""
    if raw.startswith(UTF8_BOM):
        raw = raw[3:]
    lead = raw.lstrip(b"\r\n\t ")
    if not lead.startswith(b"MSH"):
        raise ParseError("message does not start with an MSH segment", location=Location("MSH", 1))
    text, codec, warnings = decode(lead, assumed_charset)
    return parse_text(text, codec, warnings)
