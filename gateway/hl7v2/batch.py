"""Split a file (or any byte stream) into the raw bytes of each HL7v2 message, without decoding.

A file may hold one message, several messages back to back (each starting at ``MSH``), HL7 batches
(HL7 v2.5 §2.10.3: ``FHS`` [``BHS`` messages ``BTS``]… ``FTS``; batches may be several, nested or
unbalanced) and MLLP frames (``\\x0b`` … ``\\x1c\\x0d``, python-hl7's ``START_BLOCK``/``END_BLOCK``).

Rules:
- A message runs from its ``MSH`` line to the start of the next ``MSH``, ``FHS``, ``BHS``, ``BTS``
  or ``FTS`` line (or the end of its frame); its bytes, terminators included, are returned as
  they are: charsets differ per message, so nothing is decoded here.
- Batch header and trailer segments are dropped (their counts are not checked).
- A UTF-8 BOM at the start of a line that begins a message or a batch segment is dropped.
- Bytes outside any message that are not blank (junk before the first ``MSH``, a stray segment
  after ``BTS``) are returned as their own item, never silently dropped: parsing them raises a
  ParseError and the caller dead-letters them.
"""

from __future__ import annotations

import re

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
BATCH_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")

# A line start (start of data or after CR/LF), an optional BOM, then a header/trailer segment id
# followed by a character that is not part of an id (the field separator, or the end of the line).
_BOUNDARY = re.compile(rb"(?:\A|(?<=[\r\n]))(?:\xef\xbb\xbf)?(MSH|FHS|BHS|BTS|FTS)(?![A-Za-z0-9])")
_LINE_END = re.compile(rb"\r\n|\r|\n")


def split_messages(data: bytes) -> list[bytes]:
    """Raw bytes of each message in ``data`` (batch segments and MLLP framing removed)."""
    out: list[bytes] = []
    for frame in _frames(data):
        out.extend(_split_frame(frame))
    return out


def strip_mllp(data: bytes) -> list[bytes]:
    """The payloads of the MLLP frames in ``data``; ``[data]`` when it holds no start block."""
    return _frames(data)


def _frames(data: bytes) -> list[bytes]:
    if START_BLOCK not in data:
        return [data]
    frames: list[bytes] = []
    parts = data.split(START_BLOCK)
    if parts[0].strip():  # bytes before the first start block are kept, not dropped
        frames.append(parts[0])
    for part in parts[1:]:
        end = part.find(END_BLOCK)
        if end < 0:  # truncated frame: keep what arrived
            frames.append(part)
            continue
        frames.append(part[:end])
        rest = part[end + 1 :]
        if rest.startswith(CARRIAGE_RETURN):
            rest = rest[1:]
        if rest.strip():
            frames.append(rest)
    return frames


def _split_frame(frame: bytes) -> list[bytes]:
    out: list[bytes] = []
    starts = list(_BOUNDARY.finditer(frame))
    if not starts:
        return [frame] if frame.strip() else []
    _keep(out, frame[: starts[0].start()])
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(frame)
        if match.group(1) == b"MSH":
            out.append(frame[match.start(1) : end])
            continue
        # a batch header/trailer: drop its own line, keep anything after it up to the next boundary
        line_end = _LINE_END.search(frame, match.start(1), end)
        if line_end is not None:
            _keep(out, frame[line_end.end() : end])
    return out


def _keep(out: list[bytes], chunk: bytes) -> None:
    if chunk.strip():
        out.append(chunk)
