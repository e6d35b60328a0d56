"""MSH-18 charsets (gateway/hl7v2/charset.py through parse): decode right or CharsetError, never a mangled name."""

from __future__ import annotations

import pytest

from gateway.errors import CharsetError, ParseError
from gateway.hl7v2 import parse
from gateway.hl7v2.charset import codec_for, declared_charset, decode, encode

NAMES = ["Hélène Côté", "François Gélinas", "Zoë Bélanger", "Œuvre Lætitia", "Ève D'Amours", "Tremblay Paul"]
DECLARED = ["", "ASCII", "8859/1", "UNICODE UTF-8", "UTF-8"]
ENCODINGS = ["utf-8", "latin-1", "cp1252", "ascii"]


def _message(name: str, charset: str) -> str:
    family, given = name.split(" ")
    return (f"MSH|^~\\&|APP|FAC|PIVOT|CISSS|20260101120000||ADT^A04^ADT_A01|C1|P|2.5.1||||||{charset}\r"
            f"PID|1||123^^^HSA^MR||{family}^{given}\r")


def _family(raw: bytes, assumed: str | None = None) -> str:
    pid = parse(raw, assumed).first("PID")
    assert pid is not None
    return pid.get(5, 1) + " " + pid.get(5, 2)


def _representable(name: str, encoding: str) -> bool:
    try:
        name.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


@pytest.mark.parametrize("declared", DECLARED)
@pytest.mark.parametrize(("name", "encoding"), [(n, e) for n in NAMES for e in ENCODINGS if _representable(n, e)])
def test_name_is_exact_or_charset_error(name: str, encoding: str, declared: str) -> None:
    raw = _message(name, declared).encode(encoding)
    error: CharsetError | None = None
    got = ""
    try:
        got = _family(raw)
    except CharsetError as exc:
        error = exc
    if error is None:
        assert got == name
        return
    assert not name.isascii(), "an ASCII name decodes under every charset"
    assert (declared, encoding) not in {("", "utf-8"), ("8859/1", "latin-1"), ("UNICODE UTF-8", "utf-8"),
                                        ("UTF-8", "utf-8"), ("", "cp1252")}
    assert error.ack_code == "AE"
    assert error.location is not None
    assert error.location.field == 18
    assert name.split(" ")[0] not in error.describe()


@pytest.mark.parametrize(("declared", "encoding"), [
    ("ASCII", "ascii"), ("8859/1", "latin-1"), ("UNICODE UTF-8", "utf-8"), ("", "utf-8"),
])
def test_matching_declaration_decodes(declared: str, encoding: str) -> None:
    name = "Tremblay Paul" if encoding == "ascii" else "Hélène Côté"
    m = parse(_message(name, declared).encode(encoding))
    assert _family(_message(name, declared).encode(encoding)) == name
    assert m.charset == {"ascii": "ascii", "latin-1": "latin-1", "utf-8": "utf-8"}[encoding]
    assert m.warnings == []


@pytest.mark.parametrize(("declared", "encoding"), [
    ("ASCII", "utf-8"),            # non-ASCII bytes under ASCII
    ("UNICODE UTF-8", "latin-1"),  # é = E9 is not UTF-8
    ("8859/1", "utf-8"),           # would read "HÃ©lÃ¨ne": refused
])
def test_mismatched_declaration_is_charset_error(declared: str, encoding: str) -> None:
    with pytest.raises(CharsetError) as caught:
        parse(_message("Hélène Côté", declared).encode(encoding))
    assert caught.value.hl7_code == "102" or caught.value.hl7_code == "203"


def test_cp1252_sent_as_8859_1_is_refused() -> None:
    raw = _message("O’Neil Œuvre", "8859/1").encode("cp1252")  # ’ = 0x92, Œ = 0x8C: C1 bytes in 8859/1
    with pytest.raises(CharsetError):
        parse(raw)


def test_undeclared_utf8_then_cp1252_with_warning() -> None:
    m = parse(_message("Hélène Côté", "").encode("utf-8"))
    assert m.charset == "utf-8"
    assert m.warnings == []
    raw = _message("O’Neil Côté", "").encode("cp1252")
    m = parse(raw)
    assert m.charset == "cp1252"
    assert len(m.warnings) == 1
    assert "cp1252" in m.warnings[0]
    assert _family(raw) == "O’Neil Côté"


def test_undeclared_undecodable_everywhere_is_charset_error() -> None:
    raw = _message("Tremblay Paul", "").encode() .replace(b"Paul", b"P\x81\xc3ul")  # 0x81: undefined in cp1252
    with pytest.raises(CharsetError):
        parse(raw)


@pytest.mark.parametrize(("assumed", "encoding"), [("8859/1", "latin-1"), ("latin-1", "latin-1"),
                                                   ("cp1252", "cp1252"), ("UNICODE UTF-8", "utf-8")])
def test_sender_profile_charset_applies_when_msh18_is_empty(assumed: str, encoding: str) -> None:
    raw = _message("Hélène Côté", "").encode(encoding)
    m = parse(raw, assumed)
    assert m.warnings == []
    assert _family(raw, assumed) == "Hélène Côté"


def test_msh18_wins_over_sender_profile() -> None:
    raw = _message("Hélène Côté", "UNICODE UTF-8").encode("utf-8")
    assert parse(raw, "8859/1").charset == "utf-8"


def test_sender_profile_charset_is_strict() -> None:
    with pytest.raises(CharsetError):
        parse(_message("Hélène Côté", "").encode("latin-1"), "UNICODE UTF-8")
    with pytest.raises(CharsetError):
        parse(_message("Hélène Côté", "").encode("utf-8"), "8859/1")  # UTF-8 bytes assumed 8859/1
    with pytest.raises(CharsetError) as caught:
        parse(_message("Tremblay Paul", "").encode(), "klingon")
    assert caught.value.hl7_code == "203"


@pytest.mark.parametrize("value", ["ISO IR87", "UNICODE UTF-32", "8859/99", "GB 18030-2000"])
def test_unsupported_msh18_is_charset_error_203(value: str) -> None:
    with pytest.raises(CharsetError) as caught:
        parse(_message("Tremblay Paul", value).encode())
    assert caught.value.hl7_code == "203"
    assert caught.value.ack_code == "AE"


def test_non_ascii_msh18_is_charset_error() -> None:
    with pytest.raises(CharsetError):
        parse(_message("Tremblay Paul", "UTF-8é").encode())


def test_declared_charset_reads_first_repetition_and_component() -> None:
    assert declared_charset(_message("A B", "8859/1~UNICODE UTF-8").encode()) == "8859/1"
    assert declared_charset(_message("A B", " UNICODE UTF-8 ^x").encode()) == "UNICODE UTF-8"
    assert declared_charset(b"MSH|^~\\&|A\rPID|1||||||||||||||||||x") == ""
    assert declared_charset(b"garbage") == ""


def test_codec_for_and_encode() -> None:
    assert codec_for("8859/1") == "latin-1"
    assert codec_for("iso-8859-1") == "latin-1"
    assert codec_for("UNICODE UTF-8") == "utf-8"
    assert codec_for("cp1252") == "cp1252"
    assert codec_for("ascii") == "ascii"
    assert codec_for("nope") is None
    assert encode("Côté", "latin-1") == "Côté".encode("latin-1")
    assert encode("Œ", "latin-1") == b"?"
    assert encode("x", "not-a-codec") == b"x"


def test_decode_strips_bom() -> None:
    text, codec, warnings = decode(b"\xef\xbb\xbf" + _message("Hélène Côté", "").encode())
    assert text.startswith("MSH|")
    assert codec == "utf-8"
    assert warnings == []


def test_charset_error_is_a_parse_error() -> None:
    assert issubclass(CharsetError, ParseError)
