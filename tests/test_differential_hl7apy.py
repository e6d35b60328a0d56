"""Differential test: our tokenizer against hl7apy on every HL7 message of the public corpus.

For each ``*.hl7``, ``*.hl7v2`` and ``*.txt`` file under ``../shared/corpus`` whose content is HL7
(split with ``split_messages``: the python-hl7 batch file yields its one message), both parsers
read the same message and, for every segment, field, repetition, component and subcomponent,
the values must agree:

- **raw level** (everywhere): our raw ER7 text of each part equals hl7apy's raw leaf text
  (``SubComponent.value.value``). hl7apy never unescapes, so raw is what both hold.
- **unescaped level** (text leaves): our ``Segment.get(n, comp, sub, rep)`` equals python-hl7's
  ``unescape`` of hl7apy's raw leaf (app_map: ``\\.br\\`` → newline, ``\\H\\``/``\\N\\`` → nothing,
  as our tokenizer does). Leaves holding escape sequences python-hl7 drops and we keep verbatim
  (``\\Z..\\``, ``\\C..\\``, an unterminated ``\\r``) are left out of this level and counted.

Intended differences, and how the comparison handles each:

1. Terminators and decoding: hl7apy splits segments on CR only and takes ``str``. It is given our
   decoded text (MSH-18 applied, BOM dropped) with CRLF/LF turned into CR.
2. ``^~\\\\&`` (LinuxForHealth ``sample_unix``/``sample_win``): hl7apy refuses duplicate encoding
   characters; we read it as ``^~\\&``. hl7apy gets the text with MSH-2 normalised to ``^~\\&``.
3. hl7apy strips white space around each segment; we keep trailing blanks of the last field.
   The last field of each segment is compared after ``rstrip()``.
4. hl7apy drops blank fields (trailing or not), blank named components and subcomponents; we keep
   every position (``''``). Positions are aligned by hl7apy's element names (``PID_3``, ``CX_4``)
   and, for the elements it leaves unnamed (beyond the version's definition), by order among the
   non-blank values; every hl7apy element must land on one of ours with the same value, and
   every non-blank value of ours must have its hl7apy element.
5. hl7apy converts DT, TM, DTM, NM and SI values (SI ``0010`` → ``10``, trailing blanks cut); we
   keep raw text. For those leaves both sides go through hl7apy's ``datatype_factory``.
6. MSH-1 and MSH-2: both give the separator and the encoding characters, unsplit.

hl7apy parses about 50 messages/s; the corpus takes ~10 s here.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from gateway.hl7v2 import Message, parse
from gateway.hl7v2.batch import split_messages

CORPUS = Path(__file__).parents[1].parent / "shared" / "corpus"
SUFFIXES = {".hl7", ".hl7v2", ".txt"}
_NAME_POS = re.compile(r"_(\d+)$")
_CONVERTED = {"DT", "TM", "DTM", "NM", "SI"}
_PY_HL7_MAP = {".br": "\n", "H": "", "N": ""}


def _corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    files = []
    for path in sorted(CORPUS.rglob("*")):
        if path.suffix in SUFFIXES and path.is_file():
            head = path.read_bytes()[:16].lstrip(b"\xef\xbb\xbf\x0b\r\n\t ")
            if head[:3] in (b"MSH", b"FHS", b"BHS"):
                files.append(path)
    return files


FILES = _corpus_files()


@dataclass
class Outcome:
    messages: int = 0
    segments: int = 0
    fields: int = 0
    reps: int = 0
    leaves: int = 0
    converted: int = 0
    unescaped: int = 0
    unescape_skipped: int = 0
    problems: list[str] = field(default_factory=list)


def _hl7apy_text(msg: Message) -> str:
    text = msg.text.lstrip("\ufeff").replace("\r\n", "\r").replace("\n", "\r")
    d = msg.d
    quirk = f"MSH{d.field}{d.component}{d.repetition}{d.escape}{d.escape}{d.subcomponent}{d.field}"
    if text.startswith(quirk):
        text = f"MSH{d.field}{d.encoding_characters}{d.field}" + text[len(quirk):]
    return text


def _align(ours: list[str], theirs: list[Any], where: str, out: Outcome) -> list[tuple[int, str, Any]]:
    """Pair hl7apy children with our parts (1-based positions); see intended difference 4."""
    if len(theirs) == len(ours):
        pairs = [(i, s, t) for (i, s), t in zip(enumerate(ours, 1), theirs, strict=True)]
    else:
        nonblank = [(i, s) for i, s in enumerate(ours, 1) if s.strip()]
        if len(nonblank) != len(theirs):
            out.problems.append(f"{where}: {len(nonblank)} non-blank parts, hl7apy has {len(theirs)}")
            return []
        pairs = [(i, s, t) for (i, s), t in zip(nonblank, theirs, strict=True)]
    for i, _s, t in pairs:
        found = _NAME_POS.search(t.name or "")
        if found and not t.name.startswith("VARIES") and int(found[1]) != i:
            out.problems.append(f"{where}: part {i} is named {t.name} by hl7apy")
    return pairs


def _leaf(sub: Any, raw: str, ours_unescaped: str, where: str, version: str, container: Any,
          out: Outcome) -> None:
    from hl7apy.base_datatypes import TextualDataType
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.factories import datatype_factory

    out.leaves += 1
    value = sub.value
    if value is None or isinstance(value, str):
        theirs = value or ""
    elif isinstance(value, TextualDataType):
        theirs = value.value or ""
    else:
        datatype = type(value).__name__
        assert datatype in _CONVERTED, f"{where}: unexpected hl7apy datatype {datatype}"
        out.converted += 1
        mine = datatype_factory(datatype, raw, version, VALIDATION_LEVEL.TOLERANT).to_er7()
        if mine != value.to_er7():
            out.problems.append(f"{where}: {datatype} differs after hl7apy conversion")
        return
    if theirs != raw:
        out.problems.append(f"{where}: raw text differs ({len(raw)} vs {len(theirs)} chars)")
        return
    if container is None:
        return
    from hl7.util import unescape as py_unescape

    expected = py_unescape(container, theirs, _PY_HL7_MAP)
    known = all(seq in {"F", "S", "T", "R", "E", ".br", "H", "N"} or re.fullmatch(r"X(?:[0-9A-Fa-f]{2})+", seq)
                for seq in re.findall(r"\\([^\\]*)\\", theirs))
    if not known or theirs.count("\\") % 2:  # unknown or unterminated escape: python-hl7 drops it
        out.unescape_skipped += 1
        return
    out.unescaped += 1
    if expected != ours_unescaped:
        out.problems.append(f"{where}: unescaped value differs from python-hl7's")


@cache
def _compare(path: Path) -> Outcome:
    import hl7
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    out = Outcome()
    for index, raw in enumerate(split_messages(path.read_bytes()), 1):
        msg = parse(raw)
        text = _hl7apy_text(msg)
        theirs = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
        container = hl7.parse(text) if msg.d.escape == "\\" else None
        version = theirs.version
        out.messages += 1
        their_ids = [s.name for s in theirs.children]
        if their_ids != msg.segment_ids:
            out.problems.append(f"message {index}: segment ids differ")
            continue
        for seg, aseg in zip(msg.segments, theirs.children, strict=True):
            out.segments += 1
            where_seg = f"message {index} {seg.id}#{seg.index + 1}"
            parts: list[tuple[int, int, str]] = []  # (field, repetition, raw text)
            for n in range(1, seg.size + 1):
                raw_field = seg.raw(n)
                if n == seg.size:
                    raw_field = raw_field.rstrip()  # intended difference 3
                if seg.id == "MSH" and n in (1, 2):
                    parts.append((n, 1, raw_field))
                    continue
                if not raw_field.strip():
                    continue
                out.fields += 1
                parts.extend((n, r, s) for r, s in enumerate(raw_field.split(seg.d.repetition), 1))
            if len(parts) != len(aseg.children):
                out.problems.append(f"{where_seg}: {len(parts)} field repetitions, hl7apy has {len(aseg.children)}")
                continue
            last_rep = parts[-1][1] if parts else 0
            for (n, r, rep_raw), afield in zip(parts, aseg.children, strict=True):
                out.reps += 1
                where = f"{where_seg}-{n}[{r}]"
                found = _NAME_POS.search(afield.name or "")
                if found and int(found[1]) != n:
                    out.problems.append(f"{where}: hl7apy names it {afield.name}")
                    continue
                if seg.id == "MSH" and n in (1, 2):
                    _leaf(afield.children[0].children[0], rep_raw, seg.get(n), where, version, None, out)
                    continue
                comps = rep_raw.split(seg.d.component)
                for c, comp_raw, acomp in _align(comps, list(afield.children), where, out):
                    subs = comp_raw.split(seg.d.subcomponent)
                    for s, sub_raw, asub in _align(subs, list(acomp.children), f"{where}.{c}", out):
                        mine = seg.get(n, c, s, r)
                        if n == seg.size and r == last_rep and c == len(comps) and s == len(subs):
                            mine = mine.rstrip()  # intended difference 3: the segment's very end
                        _leaf(asub, sub_raw, mine, f"{where}.{c}.{s}", version, container, out)
    return out


@pytest.mark.skipif(not FILES, reason=f"public corpus not found at {CORPUS}")
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_message_matches_hl7apy(path: Path) -> None:
    outcome = _compare(path)
    assert outcome.messages >= 1
    assert outcome.problems == []


@pytest.mark.skipif(not FILES, reason=f"public corpus not found at {CORPUS}")
def test_differential_covers_the_corpus(capsys: pytest.CaptureFixture[str]) -> None:
    totals: Counter[str] = Counter()
    for path in FILES:
        o = _compare(path)
        totals.update(messages=o.messages, segments=o.segments, fields=o.fields, repetitions=o.reps,
                      leaves=o.leaves, converted=o.converted, unescaped=o.unescaped,
                      unescape_skipped=o.unescape_skipped, problems=len(o.problems))
    with capsys.disabled():
        print("\ndifferential vs hl7apy:", dict(totals))
    # INVENTORY.md: 134 messages in the corpus (133 + the batch's one), all ADT/RDE/RDS/OMP/VXU/MDM
    assert totals["messages"] >= 130
    assert totals["problems"] == 0
    assert totals["unescaped"] > totals["leaves"] // 2  # most leaves also checked unescaped
