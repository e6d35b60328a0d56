"""ZPR -> the "whole current profile" marker of a pharmacy message (our Z-segment).

    ZPR|1|PROFILE|20260310120000

ZPR-2 = ``PROFILE``: the message lists every drug the sending pharmacy considers active for the
client (one ORC group each); a drug of that pharmacy absent from it is stopped as of ZPR-3 (else
MSH-7). The marker is kept on the message's Provenance as the extension
``urn:pivot:extension:pharmacy-profile`` (``asOf`` dateTime, ``pharmacy`` Reference): that is what the
medication-profile rules read (gateway/pharmacy). The segment itself is also carried verbatim, like
every Z-segment. Any other ZPR-2 value: the segment is only carried verbatim.
"""

from __future__ import annotations

from typing import Any

from gateway.hl7v2.tokenizer import Segment
from mappings.datatypes.primitives import value
from mappings.segments.common import Env

JSON = dict[str, Any]
PROFILE_URL = "urn:pivot:extension:pharmacy-profile"
PROFILE_FLAG = "PROFILE"


def zpr_as_of(seg: Segment, env: Env, recorded: str) -> str | None:
    """The as-of time of a profile ZPR (ZPR-3, else ``recorded``); None when ZPR-2 is not PROFILE."""
    if value(seg.get(2)).upper() != PROFILE_FLAG:
        return None
    return env.time(seg, 3) or recorded


def profile_extension(as_of: str, pharmacy: JSON) -> JSON:
    """The Provenance extension the profile rules read."""
    return {"url": PROFILE_URL, "extension": [{"url": "asOf", "valueDateTime": as_of},
                                              {"url": "pharmacy", "valueReference": pharmacy}]}
