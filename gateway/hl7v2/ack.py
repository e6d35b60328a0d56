"""ACK messages we write on the hot path (HL7 v2.5 §2.9 acknowledgment, message type ACK).

    MSH|^~\\&|<MSH-5>|<MSH-6>|<MSH-3>|<MSH-4>|<now>||ACK^<trigger>^ACK|<new id>|<MSH-11>|<MSH-12>…|<MSH-18>
    MSA|<code>|<original MSH-10>
    ERR||<ERL location>|<0357 code>^<0357 text>^HL70357|E||||<user message>      (errors, v2.5+)

- MSA-1 (HL7 table 0008): AA/AE/AR (original mode, enhanced application ACK) or CA/CE/CR
  (enhanced commit ACK). MSA-2 is the original MSH-10, read from the bytes with
  :func:`recover_control_id` when the message could not be parsed.
- The ACK reuses the original delimiters and charset (MSH-18 echoed when present) so copied
  header fields stay valid; CR terminators. Without a parsed message: standard delimiters and
  only printable-ASCII header values recovered from the bytes.
- ERR follows the version copied into MSH-12: v2.5 and later use ERR-2 (ERL), ERR-3 (CWE, table
  0357), ERR-4 severity ``E`` (``W`` for the warnings of an accepted message, e.g. an end before
  its start dropped: ERR-3 ``0``) and ERR-8 user message; before v2.5 ERR-1 (ELD
  ``segment^sequence^field^code&text&HL70357``) and MSA-3 carry the same facts.
- Texts are escaped (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``) and never carry field values: only what the
  error says (ids, positions, codes).

MSH-15/MSH-16 (table 0155 AL/NE/ER/SU) decide which ACKs a sender wants: :func:`ack_modes`,
:func:`wants_ack`. python-hl7's ``create_ack`` is the model; ours is faster and adds ERR.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import Sequence
from datetime import datetime

from gateway.errors import GatewayError, ParseError
from gateway.hl7v2.charset import MSH18_CODECS, encode
from gateway.hl7v2.tokenizer import DEFAULT_DELIMITERS, Delimiters, Message, delimiters_from_header, escape, unescape

ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
_SUCCESS = frozenset({"AA", "CA"})
ACK_MODES = frozenset({"AL", "NE", "ER", "SU"})
#: HL7 table 0357 (message error condition codes) used in ERR-3.
TABLE_0357: dict[str, str] = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}
DEFAULT_VERSION = "2.5.1"
DEFAULT_PROCESSING_ID = "P"
HEAD_BYTES = 8192  # recover_control_id and the raw-bytes ACK look at no more than this
_MSH_START = re.compile(rb"(?:\A|[\r\n\x0b\s])(?:\xef\xbb\xbf)?MSH")
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_ID_PREFIX = secrets.token_hex(4)
_COUNTER = itertools.count(1)
_clock: list[tuple[int, str]] = [(0, "")]


def new_control_id() -> str:
    """A new MSH-10: 8 random hex characters per process + a 12-digit counter (20 characters, ST)."""
    return f"{_ID_PREFIX}{next(_COUNTER):012d}"


def _now() -> str:
    """MSH-7 as YYYYMMDDHHMMSS±ZZZZ, computed once per second."""
    second = int(time.time())
    cached = _clock[0]
    if cached[0] == second:
        return cached[1]
    stamp = datetime.fromtimestamp(second).astimezone().strftime("%Y%m%d%H%M%S%z")
    _clock[0] = (second, stamp)
    return stamp


class _Head:
    """What an ACK copies from the original MSH, as escaped ER7 text in delimiters ``d``."""

    __slots__ = ("app", "charset", "codec", "control_id", "d", "facility", "processing", "receiver_app",
                 "receiver_facility", "trigger", "version")

    def __init__(self, d: Delimiters) -> None:
        self.d = d
        self.app = self.facility = self.receiver_app = self.receiver_facility = ""
        self.trigger = self.processing = self.version = self.charset = self.control_id = ""
        self.codec = "ascii"


def _no_controls(value: str) -> str:
    """A value echoed into an ACK without control characters: an MLLP start (0x0B) or end (0x1C)
    block copied from the message would cut the ACK's frame short (found by the fuzz storm)."""
    return value if value.isprintable() else _CONTROLS.sub("", value)  # printable: none of them in it


def _from_message(msg: Message) -> _Head:
    d = msg.d
    head = _Head(d)
    msh = msg.msh
    first = d.repetition

    def field(n: int) -> str:
        return _no_controls(msh.raw(n).split(first)[0])

    head.app, head.facility, head.receiver_app, head.receiver_facility = field(3), field(4), field(5), field(6)
    head.trigger = escape(_no_controls(msh.get(9, 2)), d)
    head.processing, head.version, head.charset = field(11), field(12), field(18)
    head.control_id = _no_controls(msg.control_id)
    head.codec = msg.charset
    return head


def _peek(raw: bytes) -> tuple[list[str], Delimiters] | None:
    """MSH fields read from the first bytes (``fields[n-1]`` is MSH-n, as latin-1 text), or None."""
    window = raw[:HEAD_BYTES]
    found = _MSH_START.search(window)
    if found is None:
        return None
    start = found.end() - 3
    line_end = len(window)
    for term in (b"\r", b"\n", b"\x1c"):
        pos = window.find(term, start, line_end)
        if pos >= 0:
            line_end = pos
    line = window[start:line_end].decode("latin-1")
    try:
        d = delimiters_from_header(line)
    except ParseError:
        return None
    fields = line.split(d.field)
    if line_end == len(window) and len(raw) > len(window) and len(fields) > 1:
        fields.pop()  # the MSH line was cut by the window: its last field may be partial
    if len(fields) > 1:
        fields[1] = d.encoding_characters
    return fields, d


_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


def _clean(value: str) -> str:
    """Keep a value recovered from unparsed bytes only when it is printable ASCII (charset unknown)."""
    return value if _PRINTABLE.fullmatch(value) else ""


def recover_control_id(raw: bytes) -> str:
    """Best-effort MSH-10 (first component, unescaped) from broken, truncated or oversize bytes; '' if none."""
    peeked = _peek(raw)
    if peeked is None:
        return ""
    fields, d = peeked
    if len(fields) < 10:
        return ""
    value = fields[9].split(d.repetition)[0].split(d.component)[0]
    return _clean(unescape(value, d).strip())[:199]


def _from_raw(raw: bytes | None) -> _Head:
    peeked = _peek(raw) if raw else None
    if peeked is None:
        return _Head(DEFAULT_DELIMITERS)
    fields, d = peeked
    head = _Head(d)

    def field(n: int) -> str:
        return _clean(fields[n - 1].split(d.repetition)[0]) if len(fields) >= n else ""

    head.app, head.facility, head.receiver_app, head.receiver_facility = field(3), field(4), field(5), field(6)
    head.trigger = _clean(field(9).split(d.component)[1]) if d.component in field(9) else ""
    head.processing, head.version = field(11), field(12)
    head.control_id = _no_controls(unescape(field(10).split(d.component)[0], d)).strip()[:199]
    charset = field(18).split(d.component)[0].strip()
    codec = MSH18_CODECS.get(charset.upper())
    if codec is not None:
        head.charset, head.codec = charset, codec
    return head


def _version_tuple(version: str, d: Delimiters) -> tuple[int, ...]:
    known = _VERSIONS.get((version, d.component))
    if known is not None:
        return known
    parts = version.split(d.component)[0].split(".")
    try:
        value = tuple(int(p) for p in parts)
    except ValueError:
        value = (2, 5, 1)
    if len(_VERSIONS) < 256:
        _VERSIONS[version, d.component] = value
    return value


_VERSIONS: dict[tuple[str, str], tuple[int, ...]] = {}  # (MSH-12 as sent, component separator) -> version; bounded


def build_ack(code: str, *, msg: Message | None, raw: bytes | None = None, error: GatewayError | None = None,
              text: str = "", warnings: Sequence[GatewayError] = ()) -> bytes:
    """An ER7 ACK for ``msg`` (or, when it could not be parsed, for ``raw``), encoded in its charset.
    ``warnings`` (accepted messages): one more ERR each, severity ``W`` (v2.5+: ERR-4)."""
    if code not in ACK_CODES:
        raise ValueError(f"not an HL7 table 0008 acknowledgment code: {code!r}")
    head = _from_message(msg) if msg is not None else _from_raw(raw)
    d = head.d
    c, f = d.component, d.field
    version = head.version or DEFAULT_VERSION
    v = _version_tuple(version, d)
    msg_type = f"ACK{c}{head.trigger}{c}ACK" if v >= (2, 3, 1) else f"ACK{c}{head.trigger}"
    msh = [
        "MSH", d.encoding_characters, head.receiver_app, head.receiver_facility, head.app, head.facility,
        _now(), "", msg_type, new_control_id(), head.processing or DEFAULT_PROCESSING_ID, version,
    ]
    if head.charset:
        msh.extend(["", "", "", "", "", head.charset])
    failed = error is not None or code not in _SUCCESS
    user_text = escape(_no_controls(_one_line(text or (error.message if error is not None else ""))), d)[:250]
    msa = ["MSA", code, escape(head.control_id, d)]
    segments = [f.join(msh), f.join(msa)]
    if failed:
        hl7_code = error.hl7_code if error is not None else "207"
        label = escape(TABLE_0357.get(hl7_code, "Application internal error"), d)
        where = _location(error, d)
        if v >= (2, 5):
            segments.append(f.join(["ERR", "", where, f"{hl7_code}{c}{label}{c}HL70357", "E", "", "", "",
                                    user_text]))
        else:
            s = d.subcomponent
            where = c.join(where.split(c)[:3]) if where else c.join(["", "", ""])  # ELD: seg^seq^field^code
            segments[1] = f.join([*msa, user_text[:80]]) if user_text else segments[1]
            segments.append(f.join(["ERR", f"{where}{c}{hl7_code}{s}{label}{s}HL70357"]))
    elif text and v < (2, 5):
        segments[1] = f.join([*msa, user_text[:80]])
    segments.extend(_err(w, d, v, "W") for w in warnings)
    return encode("\r".join(segments) + "\r", head.codec)


def _err(error: GatewayError, d: Delimiters, v: tuple[int, ...], severity: str) -> str:
    """One ERR segment for ``error`` (ERL location, 0357 code, severity, user message; ELD before v2.5)."""
    c, f = d.component, d.field
    label = escape(TABLE_0357.get(error.hl7_code, "Application internal error"), d)
    where = _location(error, d)
    if v >= (2, 5):
        user_text = escape(_no_controls(_one_line(error.message)), d)[:250]
        return f.join(["ERR", "", where, f"{error.hl7_code}{c}{label}{c}HL70357", severity, "", "", "", user_text])
    where = c.join(where.split(c)[:3]) if where else c.join(["", "", ""])
    return f.join(["ERR", f"{where}{c}{error.hl7_code}{d.subcomponent}{label}{d.subcomponent}HL70357"])


def _one_line(text: str) -> str:
    return " ".join(text.split()) if ("\r" in text or "\n" in text) else text


def _location(error: GatewayError | None, d: Delimiters) -> str:
    """ERR-2 (ERL) / ERR-1 (ELD) location: segment^sequence^field[^repetition^component]; '' if unknown."""
    loc = error.location if error is not None else None
    if loc is None or not _SEGMENT_ID.fullmatch(loc.segment):
        return ""
    return loc.er7(d.component)


def ack_modes(msg: Message) -> tuple[str, str]:
    """(MSH-15 accept ACK type, MSH-16 application ACK type), table 0155; '' when absent or invalid.

    Both '' is original mode; either valued is enhanced mode (HL7 v2.5 §2.9.3).
    """
    accept = msg.msh.get(15).strip().upper()
    app = msg.msh.get(16).strip().upper()
    return (accept if accept in ACK_MODES else "", app if app in ACK_MODES else "")


def wants_ack(mode: str, code: str) -> bool:
    """Whether an ACK with ``code`` is sent under ``mode``: AL always, NE never, ER only on error,
    SU only on success; '' (not valued) always."""
    if mode == "NE":
        return False
    if mode == "ER":
        return code not in _SUCCESS
    if mode == "SU":
        return code in _SUCCESS
    return True
