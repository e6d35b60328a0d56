"""MSH-18 character sets: find the declared charset in raw bytes and decode strictly.

HL7 table 0211 values we accept: ``ASCII``, ``8859/1`` … ``8859/15``, ``UNICODE UTF-8`` (and the
common ``UTF-8``/``UNICODE``). Undeclared: the sender profile's charset if one is set, else UTF-8,
else cp1252 with a warning. Bytes invalid for the declared charset raise :class:`CharsetError`
(AE), never a mangled name.
"""

from __future__ import annotations

import re

from gateway.errors import CharsetError, Location, ParseError

MSH18_CODECS: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UNICODE": "utf-8",
}
_C1 = re.compile(rb"[\x80-\x9f]")
UTF8_BOM = b"\xef\xbb\xbf"


def declared_charset(raw: bytes) -> str:
    """Return MSH-18 (first repetition, trimmed) read from the raw bytes, '' if absent."""
    start = raw.find(b"MSH")
    if start < 0 or len(raw) < start + 8:
        return ""
    sep = raw[start + 3 : start + 4]
    end = len(raw)
    for term in (b"\r", b"\n"):
        pos = raw.find(term, start)
        if 0 <= pos < end:
            end = pos
    fields = raw[start:end].split(sep)
    # fields[0] = 'MSH', fields[1] = MSH-2, so MSH-n = fields[n-1]
    if len(fields) < 18:
        return ""
    rep_sep = raw[start + 5 : start + 6] if len(raw) > start + 5 else b"~"
    value = fields[17].split(rep_sep)[0] if rep_sep else fields[17]
    try:
        return value.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ParseError("MSH-18 is not ASCII", location=Location("MSH", 1, 18)) from None


def decode(raw: bytes, assumed: str | None = None) -> tuple[str, str, list[str]]:
    """Decode a whole message. Returns (text, codec used, warnings)."""
    warnings: list[str] = []
    if raw.startswith(UTF8_BOM):
        raw = raw[3:]
    declared = declared_charset(raw)
    if declared:
        codec = MSH18_CODECS.get(declared.upper())
        if codec is None:
            raise CharsetError("unsupported character set in MSH-18", location=Location("MSH", 1, 18),
                               hl7_code="203")
        return _strict(raw, codec, Location("MSH", 1, 18)), codec, warnings
    if assumed:
        return _strict(raw, assumed, Location("MSH", 1, 18)), assumed, warnings
    try:
        return raw.decode("utf-8"), "utf-8", warnings
    except UnicodeDecodeError:
        warnings.append("MSH-18 empty and bytes not UTF-8: decoded as cp1252")
        try:
            return raw.decode("cp1252"), "cp1252", warnings
        except UnicodeDecodeError:
            raise CharsetError("bytes invalid in UTF-8 and cp1252", location=Location("MSH", 1, 18)) from None


def _strict(raw: bytes, codec: str, where: Location) -> str:
    try:
        text = raw.decode(codec)
    except (UnicodeDecodeError, LookupError):
        raise CharsetError(f"bytes invalid for declared charset {codec}", location=where) from None
    if codec == "latin-1" and _C1.search(raw):
        raise CharsetError("C1 control bytes in an ISO-8859-1 message (cp1252 sent as 8859/1?)",
                           location=where)
    return text
