"""Lean HL7v2 ER7 tokenizer: the hot path (hl7apy is the reference, see tests/test_differential_hl7apy.py).

``parse(raw)`` checks MSH-1/MSH-2 on the bytes, decodes per MSH-18 (charset.py), splits segments
on CR, LF or CRLF and fields on the MSH-1 separator, keeping each field's raw (escaped) text.
Repetitions are split on first access; components and subcomponents are split and unescaped on
first access to a repetition; both are cached. Every error is a :class:`ParseError` (or its
subclass CharsetError) with a location.

Numbering follows HL7: ``seg.get(3)`` is PID-3; for MSH (and FHS/BHS) ``get(1)`` is the field
separator and ``get(2)`` the encoding characters, as in the standard; neither is split further.

Escapes (HL7 v2.5 §2.7): ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` → the delimiter, ``\\Xhh…\\`` → those bytes
decoded in the message charset, ``\\.br\\`` (and ``\\.sp\\``) → newline, ``\\H\\``/``\\N\\`` (highlight)
→ nothing; any other sequence (``\\Z…\\``, ``\\C…\\``, ``\\.in\\`` …) is kept verbatim. The HL7 null
``""`` is kept as the two characters: the mapping layer decides what it means.

Quirks accepted: a UTF-8 BOM, blank lines, and a doubled escape character in MSH-2
(``^~\\\\&``, seen in LinuxForHealth corpus files) read as ``^~\\&``.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass

from gateway.errors import Location, ParseError
from gateway.hl7v2.charset import UTF8_BOM, decode

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_KNOWN_IDS: set[str] = set()  # ids already checked against _SEGMENT_ID (bounded)
BATCH_SEGMENTS = frozenset({"FHS", "FTS", "BHS", "BTS"})
_HEADER_SEGMENTS = frozenset({"MSH", "FHS", "BHS"})
_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


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
_DELIMITERS: dict[str, Delimiters] = {}  # MSH-1 + MSH-2 as sent -> their (valid) Delimiters; bounded


def delimiters_from_header(head: str) -> Delimiters:
    """Read MSH-1 and MSH-2 from the first segment's text; ParseError when they are unusable.

    Delimiters must be distinct printable ASCII punctuation (HL7 v2.5 §2.5.4). A 5-character MSH-2
    whose 3rd and 4th characters are the same (``^~\\\\&``) is read as the 4-character ``^~\\&``.
    """
    if not head.startswith("MSH"):
        raise ParseError("message does not start with an MSH segment", location=Location("MSH", 1))
    if len(head) < 8:
        raise ParseError("MSH segment too short for MSH-1 and MSH-2", location=Location("MSH", 1, 2),
                         hl7_code="102")
    fsep = head[3]
    enc_end = head.find(fsep, 4)
    sent = head[3:enc_end] if enc_end >= 0 else head[3:]
    known = _DELIMITERS.get(sent)
    if known is not None:  # MSH-1 + MSH-2 as a sender writes them in every message: checked once
        return known
    if fsep not in _PUNCT:
        raise ParseError("invalid field separator in MSH-1", location=Location("MSH", 1, 1), hl7_code="102")
    enc = sent[1:]
    if len(enc) == 5 and enc[2] == enc[3]:
        enc = enc[:3] + enc[4]  # literal '^~\\&' quirk: a doubled escape character
    if not 4 <= len(enc) <= 5 or len(set(enc + fsep)) != len(enc) + 1 or not _PUNCT.issuperset(enc):
        raise ParseError("invalid encoding characters in MSH-2", location=Location("MSH", 1, 2),
                         hl7_code="102")
    d = Delimiters(fsep, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) > 4 else "")
    if len(_DELIMITERS) < 64:
        _DELIMITERS[sent] = d
    return d


def unescape(text: str, d: Delimiters, codec: str = "latin-1") -> str:
    """Resolve the escape sequences of one (sub)component; unknown sequences stay verbatim."""
    esc = d.escape
    if not esc or esc not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        start = text.find(esc, i)
        if start < 0:
            out.append(text[i:])
            break
        if start > i:
            out.append(text[i:start])
        end = text.find(esc, start + 1)
        if end < 0:
            out.append(text[start:])
            break
        value = _escape_value(text[start + 1 : end], d, codec)
        out.append(text[start : end + 1] if value is None else value)
        i = end + 1
    return "".join(out)


def _escape_value(seq: str, d: Delimiters, codec: str) -> str | None:
    if not seq:
        return None
    if len(seq) == 1:
        return {"F": d.field, "S": d.component, "T": d.subcomponent, "R": d.repetition, "E": d.escape,
                "H": "", "N": ""}.get(seq)
    if seq == ".br":
        return "\n"
    if seq.startswith(".sp"):
        count = seq[3:].strip()
        return "\n" * int(count) if count.isdigit() and len(count) < 4 else ("\n" if not count else None)
    if seq[0] == "X" and len(seq) % 2 == 1:
        try:
            return bytes.fromhex(seq[1:]).decode(codec)
        except (ValueError, LookupError):  # UnicodeDecodeError is a ValueError
            return None
    return None


def escape(text: str, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Escape ``text`` for one ER7 (sub)component: delimiters → \\F\\ \\S\\ \\T\\ \\R\\ \\E\\, newline → \\.br\\."""
    if text.isalnum():  # delimiters are punctuation (delimiters_from_header): nothing to escape
        return text
    esc = d.escape
    out = text.replace(esc, f"{esc}E{esc}")
    for char, code in ((d.field, "F"), (d.component, "S"), (d.subcomponent, "T"), (d.repetition, "R")):
        if char in out:
            out = out.replace(char, f"{esc}{code}{esc}")
    if d.truncation and d.truncation in out:
        out = out.replace(d.truncation, f"{esc}P{esc}")
    if "\r" in out or "\n" in out:
        out = out.replace("\r\n", "\n").replace("\r", "\n").replace("\n", f"{esc}.br{esc}")
    return out


class Rep:
    """One repetition of a field: components, each a list of subcomponents (unescaped, split lazily)."""

    __slots__ = ("_codec", "_comps", "_d", "raw")

    def __init__(self, raw: str, d: Delimiters, codec: str = "latin-1"):
        self.raw = raw
        self._d = d
        self._codec = codec
        self._comps: list[list[str]] | None = None

    @classmethod
    def literal(cls, raw: str) -> Rep:
        """A repetition that is not split or unescaped (MSH-1, MSH-2)."""
        rep = cls(raw, DEFAULT_DELIMITERS)
        rep._comps = [[raw]]
        return rep

    @property
    def comps(self) -> list[list[str]]:
        comps = self._comps
        if comps is None:
            raw, d = self.raw, self._d
            if d.escape not in raw:
                if d.subcomponent not in raw:
                    comps = [[c] for c in raw.split(d.component)]
                else:
                    comps = [c.split(d.subcomponent) for c in raw.split(d.component)]
            else:
                comps = [[unescape(s, d, self._codec) for s in c.split(d.subcomponent)]
                         for c in raw.split(d.component)]
            self._comps = comps
        return comps

    def get(self, comp: int = 1, sub: int = 1) -> str:
        """Component ``comp``, subcomponent ``sub`` (1-based), unescaped; '' when absent."""
        comps = self._comps
        if comps is None:
            comps = self.comps
        if 0 < comp <= len(comps):
            subs = comps[comp - 1]
            return subs[sub - 1] if 0 < sub <= len(subs) else ""
        return ""

    def key(self) -> Hashable:
        """A hashable value such that two repetitions with equal keys have equal components (the
        memo key of conversions, mappings/datatypes/memo.py)."""
        raw, d = self.raw, self._d
        if self._comps is None and d.escape not in raw:  # comps depend on raw and two separators only
            return (raw, d.component, d.subcomponent)
        return tuple(map(tuple, self.comps))  # a tuple of tuples: never equal to the form above

    def component(self, comp: int) -> str:
        """The whole component (subcomponents joined back with the subcomponent separator), unescaped."""
        comps = self.comps
        if comp < 1 or comp > len(comps):
            return ""
        return self._d.subcomponent.join(comps[comp - 1])

    def __bool__(self) -> bool:
        return self.raw != ""

    def __repr__(self) -> str:  # no values: reprs end up in logs
        return f"<Rep {len(self.raw)} chars>"


class Segment:
    """One segment: id, raw field strings, and lazily split repetitions."""

    __slots__ = ("_offset", "_split", "codec", "d", "fields", "id", "index")

    def __init__(self, sid: str, fields: list[str], d: Delimiters, index: int, codec: str = "latin-1"):
        self.id = sid
        self.fields = fields  # fields[0] is the id; for MSH fields[1] is MSH-2
        self.d = d
        self.index = index
        self.codec = codec
        self._offset = 1 if sid in _HEADER_SEGMENTS else 0
        self._split: list[list[Rep]] | None = None

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
        split = self._split
        if split is None:
            split = self._split_all()
        i = n - self._offset
        return split[i] if n > 0 and 0 <= i < len(split) else []

    def _split_all(self) -> list[list[Rep]]:
        """Split every field into repetitions at once (one pass is cheaper than one call per field)."""
        d, codec = self.d, self.codec
        rsep = d.repetition
        split: list[list[Rep]] = [
            [] if not f else [Rep(f, d, codec)] if rsep not in f else [Rep(r, d, codec) for r in f.split(rsep)]
            for f in self.fields
        ]
        # split[0] stands for the segment id, or for MSH-1 (the field separator) in MSH/FHS/BHS
        split[0] = [Rep.literal(d.field)] if self._offset else []
        if self._offset and len(split) > 1:
            split[1] = [Rep.literal(self.fields[1])] if self.fields[1] else []
        self._split = split
        return split

    def rep(self, n: int, rep: int = 1) -> Rep | None:
        reps = self.reps(n)
        return reps[rep - 1] if 0 < rep <= len(reps) else None

    def get(self, n: int, comp: int = 1, sub: int = 1, rep: int = 1) -> str:
        """Field n, repetition ``rep``, component ``comp``, subcomponent ``sub``; unescaped, '' if absent."""
        split = self._split  # reps() and Rep.get inlined: the mapping's hottest call
        if split is None:
            split = self._split_all()
        i = n - self._offset
        if n > 0 and 0 <= i < len(split):
            reps = split[i]
            if 0 < rep <= len(reps):
                return reps[rep - 1].get(comp, sub)
        return ""

    def __repr__(self) -> str:
        return f"<Segment {self.id} #{self.index + 1} {self.size} fields>"


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
        """MSH-10 message control id."""
        return self.segments[0].get(10)

    @property
    def message_code(self) -> str:
        """MSH-9.1 message code (ADT, ORU…)."""
        return self.segments[0].get(9, 1)

    @property
    def trigger(self) -> str:
        """MSH-9.2 trigger event (A04…)."""
        return self.segments[0].get(9, 2)

    @property
    def structure(self) -> str:
        """MSH-9.3 message structure (ADT_A01…), '' when not sent."""
        return self.segments[0].get(9, 3)

    @property
    def version(self) -> str:
        """MSH-12.1 version id."""
        return self.segments[0].get(12, 1)

    @property
    def sending_application(self) -> str:
        return self.segments[0].get(3, 1)

    @property
    def sending_facility(self) -> str:
        return self.segments[0].get(4, 1)

    @property
    def sender(self) -> str:
        """Sending application + facility (MSH-3.1|MSH-4.1): the key, with MSH-10, for duplicate detection."""
        msh = self.segments[0]  # the MSH getters read it directly: each is called several times per message
        return f"{msh.get(3, 1)}|{msh.get(4, 1)}"

    @property
    def segment_ids(self) -> list[str]:
        return [s.id for s in self.segments]

    def __repr__(self) -> str:
        return f"<Message {self.message_code}^{self.trigger} {len(self.segments)} segments>"


def split_segments(text: str) -> list[str]:
    """Segment strings of a decoded message (CR, LF or CRLF terminators); a BOM and blank lines are dropped."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return [s for s in text.split("\r") if s and not s.isspace()]


def parse_text(text: str, charset: str = "utf-8", warnings: list[str] | None = None) -> Message:
    """Tokenize an already decoded message."""
    lines = split_segments(text)
    if not lines:
        raise ParseError("empty message", location=Location("MSH", 1))
    return _tokenize(lines, delimiters_from_header(lines[0]), charset, warnings or [], text)


def _tokenize(lines: list[str], d: Delimiters, charset: str, warnings: list[str], text: str,
              msh: Segment | None = None) -> Message:
    """Segments of ``lines``; ``msh``: the first line already tokenized (same text, delimiters, charset)."""
    fsep = d.field
    valid = _SEGMENT_ID.fullmatch
    known = _KNOWN_IDS
    segments: list[Segment] = [] if msh is None else [msh]
    for i, line in enumerate(lines[len(segments):], len(segments)):
        fields = line.split(fsep)
        sid = fields[0]
        if sid not in known:
            if not valid(sid):
                raise ParseError(f"invalid segment id at segment {i + 1}", location=Location("", i + 1))
            if len(known) < 4096:
                known.add(sid)
        segments.append(Segment(sid, fields, d, i, charset))
    segments[0].fields[1] = d.encoding_characters
    return Message(segments, d, charset, warnings, text)


def parse(raw: bytes, assumed_charset: str | None = None, head: Message | None = None) -> Message:
    """Check MSH-1/MSH-2, decode (MSH-18, else the sender profile's charset, else UTF-8 then cp1252), tokenize.

    ``head``: the MSH segment alone, already tokenized (gateway.pipeline.msh_head): its segment (and
    the fields already split) is the message's when the first line reads the same text, with the
    same delimiters and charset; else it is ignored."""
    if raw.startswith(UTF8_BOM):
        raw = raw[3:]
    lead = raw.lstrip(b"\r\n\t ") if raw[:1] in b"\r\n\t " else raw
    if not lead.startswith(b"MSH"):
        raise ParseError("message does not start with an MSH segment", location=Location("MSH", 1))
    end = len(lead)
    for term in (b"\r", b"\n"):
        pos = lead.find(term, 0, end)
        if pos >= 0:
            end = pos
    # MSH-1/2 problems are AR and come before any charset AE; the delimiters are ASCII, so they read the
    # same in every supported charset (all ASCII-compatible)
    d = delimiters_from_header(lead[:end].decode("latin-1"))
    text, codec, warnings = decode(lead, assumed_charset)
    lines = split_segments(text)
    same = head is not None and head.text == lines[0] and head.charset == codec and head.d == d
    return _tokenize(lines, d, codec, warnings, text, head.msh if same and head is not None else None)
