"""MSH-18 character sets: find the declared charset in raw bytes and decode strictly.

HL7 table 0211 values we accept in MSH-18 (first repetition, first component): ``ASCII``,
``8859/1`` … ``8859/15``, ``UNICODE UTF-8`` (and the common ``UTF-8``/``UNICODE``). Anything else
is CharsetError (ERR-3 ``203``). Decision order (HL7 v2.5 §2.15.9.18):

1. MSH-18 valued → that charset, strictly;
2. MSH-18 empty and the sender profile names a charset (an MSH-18 value or a Python codec name)
   → that charset, strictly;
3. else UTF-8; bytes that are not UTF-8 → cp1252 with a warning on ``Message.warnings``.

Bytes invalid for the charset in force raise :class:`CharsetError` (AE), never a mangled name:
undecodable bytes, C1 control bytes in an ISO-8859 message (cp1252 sent as 8859/1), and UTF-8
multi-byte sequences in a message declared single-byte (UTF-8 sent as 8859/1 would give "Ã©").
"""

from __future__ import annotations

import codecs
import re

from gateway.errors import CharsetError, Location

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
#: MSH-18 value to echo for a codec (ACKs are written in the charset of the message they answer).
CODEC_MSH18: dict[str, str] = {"ascii": "ASCII", "latin-1": "8859/1", "utf-8": "UNICODE UTF-8"}
UTF8_BOM = b"\xef\xbb\xbf"
_C1 = re.compile(rb"[\x80-\x9f]")
_NON_ASCII = re.compile(rb"[\x80-\xff]")
_MSH18 = Location("MSH", 1, 18)


def codec_for(name: str) -> str | None:
    """Python codec for an MSH-18 value or a codec name ('8859/1', 'latin-1', 'cp1252'); None if unknown."""
    key = name.strip()
    codec = MSH18_CODECS.get(key.upper())
    if codec is not None:
        return codec
    try:
        info = codecs.lookup(key)
    except LookupError:
        return None
    return {"iso8859-1": "latin-1", "us-ascii": "ascii"}.get(info.name, info.name)


def declared_charset(raw: bytes) -> str:
    """MSH-18 (first repetition, first component, trimmed) read from the raw bytes, '' if absent.

    Raises CharsetError (203) when MSH-18 holds non-ASCII bytes: no table 0211 value does.
    """
    start = raw.find(b"MSH")
    if start < 0 or len(raw) < start + 8:
        return ""
    sep = raw[start + 3 : start + 4]
    end = len(raw)
    for term in (b"\r", b"\n"):
        pos = raw.find(term, start, end)
        if pos >= 0:
            end = pos
    fields = raw[start:end].split(sep)
    # fields[0] = 'MSH', fields[1] = MSH-2, so MSH-n = fields[n-1]
    if len(fields) < 18:
        return ""
    value = fields[17]
    for cut in (raw[start + 5 : start + 6], raw[start + 4 : start + 5]):  # repetition, component
        if cut and cut != sep:
            value = value.split(cut)[0]
    try:
        return value.decode("ascii").strip()
    except UnicodeDecodeError:
        raise CharsetError("MSH-18 is not ASCII", location=_MSH18, hl7_code="203") from None


def decode(raw: bytes, assumed: str | None = None) -> tuple[str, str, list[str]]:
    """Decode a whole message per MSH-18 / sender profile / UTF-8 / cp1252. Returns (text, codec, warnings)."""
    warnings: list[str] = []
    if raw.startswith(UTF8_BOM):
        raw = raw[3:]
    declared = declared_charset(raw)
    if declared:
        codec = MSH18_CODECS.get(declared.upper())
        if codec is None:
            raise CharsetError("unsupported character set in MSH-18", location=_MSH18, hl7_code="203")
        return _strict(raw, codec), codec, warnings
    if assumed:
        codec = codec_for(assumed)
        if codec is None:
            raise CharsetError("unknown character set in the sender profile", location=_MSH18, hl7_code="203")
        return _strict(raw, codec), codec, warnings
    try:
        return raw.decode("utf-8"), "utf-8", warnings
    except UnicodeDecodeError:
        pass
    warnings.append("MSH-18 empty and bytes not UTF-8: decoded as cp1252")
    try:
        return raw.decode("cp1252"), "cp1252", warnings
    except UnicodeDecodeError:
        raise CharsetError("bytes invalid in UTF-8 and cp1252", location=_MSH18) from None


def _strict(raw: bytes, codec: str) -> str:
    try:
        text = raw.decode(codec)
    except (UnicodeDecodeError, LookupError):
        raise CharsetError(f"bytes invalid for charset {codec}", location=_MSH18) from None
    if _single_byte(codec) and _NON_ASCII.search(raw):
        if not codec.startswith("cp") and _C1.search(raw):
            raise CharsetError("C1 control bytes in an ISO-8859 message (cp1252 sent as 8859/1?)",
                               location=_MSH18)
        if _is_utf8(raw):
            raise CharsetError(f"UTF-8 byte sequences in a message in {codec} (UTF-8 sent as 8859/1?)",
                               location=_MSH18)
    return text


def _single_byte(codec: str) -> bool:
    return codec == "latin-1" or codec.startswith(("iso8859", "cp125"))


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def encode(text: str, codec: str) -> bytes:
    """Encode our own output (an ACK) in ``codec``; characters it cannot hold become '?'."""
    try:
        return text.encode(codec)
    except UnicodeEncodeError:
        return text.encode(codec, errors="replace")
    except LookupError:
        return text.encode("utf-8")
