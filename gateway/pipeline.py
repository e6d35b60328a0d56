"""The pipeline spine: raw HL7v2 bytes to a resolved result, the one place these steps are written.

    decode   (our tokenizer; charset per sender profile or MSH-18)     ParseError        stage "decode"
    supported? (MSH-9 type and trigger)                                UnsupportedError  stage "supported"
    require  (segments and fields the structure requires, once)        StructureError    stage "structure"
    map + validate (mappings.map_message, the structure not re-checked) MapError/ValidateError stage "map"
    identity (gateway.identity: one person is one Patient)             MapError 205      stage "identity"

Who calls it: the intake (``decode``, then its own checks — sender authorization, MSH-10,
duplicates — between ``require`` and ``resolve``), the mapping worker when the intake's result
is not in the handoff (``run``), ``pivot identity rebuild`` (``run`` on a pipeline without
identity: the resolver's rebuild applies the results), dead-letter replay (through the intake).
A pipeline holds no state of its own besides the identity resolver it is given.

The pure steps (decode → supported → structure → map + validate: no log, store or identity file)
can run ahead, in another process (``pivot ingest --jobs N``): :meth:`Pipeline.ahead` gives a
picklable :class:`Ahead`; the intake then runs the same checks in the same order on it
(``decode`` again, :meth:`Pipeline.required`, :meth:`Pipeline.resolve_ahead`), so a
message gets the same reply, dead letter and result whether its pure steps ran ahead or not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.envelope import now_iso
from gateway.errors import GatewayError, MapWarning, ParseError, PublishError
from gateway.hl7v2.tokenizer import Message, Segment, parse, parse_text
from gateway.identity import IdentityResolver
from mappings import IdentifierSystems, MapContext, MapResult, Profile, Profiles, check_required, check_supported
from mappings import map_message as _map_message

DECODE, SUPPORTED, STRUCTURE, MAP, IDENTITY = "decode", "supported", "structure", "map", "identity"


@dataclass(slots=True)
class Outcome:
    """What the spine made of one message: the parsed message (None when it could not be decoded),
    the resolved MapResult (None on a refusal), the values the mapping dropped (``warnings``: the
    ACK's ERR severity W and the review entries; taken off the MapResult, which is handed on as
    JSON), or the GatewayError and the ``stage`` that raised it."""

    msg: Message | None = None
    result: MapResult | None = None
    warnings: list[MapWarning] = field(default_factory=list)
    error: GatewayError | None = None
    stage: str = ""


@dataclass(slots=True)
class Ahead:
    """The pure steps of one message run ahead of the intake (picklable: a worker process's answer):
    ``received_at`` (ISO, the mapping's), the mapped result and its warnings, or the error and the
    ``stage`` (DECODE, SUPPORTED, STRUCTURE, MAP) that refused it. The parsed message is not in it:
    the intake decodes the raw bytes again (a lazy tokenizer: ~0.05 ms, far less than unpickling a
    mapped message), with the same result."""

    received_at: str
    result: MapResult | None = None
    warnings: list[MapWarning] = field(default_factory=list)
    error: GatewayError | None = None
    stage: str = ""


class Pipeline:
    """The steps of the module docstring for one configuration (sender profiles, identifier systems).

    ``identity``: the resolver applied last; None stops after map + validate (``identity rebuild``
    applies the results itself). ``on_fallback``: called with a message decoded as cp1252 because
    its bytes were not in the declared charset (the intake counts and logs it)."""

    def __init__(self, profiles: Profiles, systems: IdentifierSystems, identity: IdentityResolver | None,
                 on_fallback: Callable[[Message], None] | None = None) -> None:
        self.profiles = profiles
        self.systems = systems
        self.identity = identity
        self.on_fallback = on_fallback
        # the MSH segment ``decode`` last found the sender's profile for, and that profile: ``require``
        # of that message reuses it (one slot: another thread's message in between only costs a lookup)
        self._found: tuple[Segment, Profile] | None = None

    def decode(self, raw: bytes, head: Message | None = None) -> Message:
        """Parse (charset of the sender's profile, found from the MSH segment ``head`` or read here,
        unless MSH-18 says otherwise), then check the type is supported. ParseError / UnsupportedError.
        The message keeps ``head``'s MSH segment when it reads the same (tokenizer.parse)."""
        head = head if head is not None else msh_head(raw)
        profile = self.profiles.for_message(head) if head is not None else None
        msg = parse(raw, profile.charset if profile is not None else None, head)
        if profile is not None and head is not None and msg.msh is head.msh:  # the same sender fields
            self._found = (msg.msh, profile)
        if msg.warnings and self.on_fallback is not None:
            self.on_fallback(msg)
        check_supported(msg)
        return msg

    def require(self, msg: Message) -> Profile:
        """The sender's profile, once ``msg`` has every segment and field its structure requires
        (less what the profile relaxes). StructureError (ACK AE; enhanced mode CE)."""
        profile = self._profile(msg)
        check_required(msg, profile.relax)
        return profile

    def _profile(self, msg: Message) -> Profile:
        """``profiles.for_message(msg)``, found already when ``decode`` just read that message."""
        found = self._found
        return found[1] if found is not None and found[0] is msg.msh else self.profiles.for_message(msg)

    def resolve(self, msg: Message, profile: Profile, received_at: datetime, *, identify: bool = True) -> Outcome:
        """Map + validate a message ``require`` accepted (its structure is not checked again), then
        resolve identities (unless ``identify`` is False). A refusal is the Outcome's error and stage; only
        PublishError (the shared state unavailable: nothing about the message) is raised."""
        mapped = self._map(msg, profile, received_at)
        if isinstance(mapped, Outcome):
            return mapped
        warnings, mapped.warnings = mapped.warnings, []
        return self._identify(msg, mapped, warnings) if identify else Outcome(msg=msg, result=mapped,
                                                                              warnings=warnings)

    def _map(self, msg: Message, profile: Profile, received_at: datetime) -> MapResult | Outcome:
        """Map + validate: the result, or the refusal as an Outcome (stage MAP)."""
        ctx = MapContext(profile=profile, systems=self.systems, received_at=received_at)
        try:
            return _map_message(msg, ctx, structure_checked=True)
        except GatewayError as exc:
            return Outcome(msg=msg, error=exc, stage=MAP)

    def _identify(self, msg: Message, mapped: MapResult, warnings: list[MapWarning]) -> Outcome:
        if self.identity is None:
            return Outcome(msg=msg, result=mapped, warnings=warnings)
        try:
            return Outcome(msg=msg, result=self.identity.resolve(mapped), warnings=warnings)
        except PublishError:  # the shared state is down: not the message's fault (AR "system down", a retry)
            raise
        except GatewayError as exc:
            return Outcome(msg=msg, warnings=warnings, error=exc, stage=IDENTITY)

    def run(self, raw: bytes, received_at: datetime | None = None, *, identify: bool = True) -> Outcome:
        """Every step on ``raw`` (``received_at``: informative, now when not given; ``identify``: False
        stops after map + validate)."""
        try:
            msg = self.decode(raw)
        except ParseError as exc:
            return Outcome(error=exc, stage=DECODE)
        except GatewayError as exc:
            return Outcome(error=exc, stage=SUPPORTED)
        try:
            profile = self.require(msg)
        except GatewayError as exc:
            return Outcome(msg=msg, error=exc, stage=STRUCTURE)
        return self.resolve(msg, profile, received_at or datetime.now(UTC), identify=identify)

    def warm(self) -> None:
        """Decode + map + validate a few synthetic messages (gateway.samples: no one's data) and keep
        nothing: no identity, nothing stored. Run at start-up, it makes the first real message not
        pay for lazy imports, compiled checks and cold caches — ~150 ms here, during which the ACKs
        of every message queued behind it waited too (a fresh gateway's first second)."""
        from gateway.samples import site_message

        for trigger in ("A04", "A08", "A03"):
            self.run(site_message(0, trigger=trigger), identify=False)

    # -- the pure steps ahead (a worker process), then the rest in the intake --------------------------
    def ahead(self, raw: bytes) -> Ahead:
        """decode → supported → structure → map + validate of ``raw``, received now (``run`` without
        identity); never raises for the message (its refusal is the Ahead's error)."""
        received_at = now_iso()
        outcome = self.run(raw, received(received_at), identify=False)
        return Ahead(received_at, outcome.result, outcome.warnings, outcome.error, outcome.stage)

    def required(self, ahead: Ahead, msg: Message) -> Profile:
        """``require`` of a message whose pure steps ran ahead: its profile, or its StructureError raised."""
        if ahead.stage == STRUCTURE and ahead.error is not None:
            raise ahead.error
        return self._profile(msg)

    def resolve_ahead(self, ahead: Ahead, msg: Message) -> Outcome:
        """``resolve`` of a message whose map + validate ran ahead: identities resolved here."""
        if ahead.error is not None or ahead.result is None:
            return Outcome(msg=msg, warnings=ahead.warnings, error=ahead.error, stage=ahead.stage)
        return self._identify(msg, ahead.result, ahead.warnings)


def msh_head(raw: bytes) -> Message | None:
    """The MSH segment alone (its first 4 KB), decoded as latin-1: enough to find the sender and its
    profile, without decoding or splitting the rest of the message."""
    head = raw[:8192].lstrip(b"\xef\xbb\xbf\r\n\t ")[:4096]
    ends = [i for i in (head.find(b"\r"), head.find(b"\n")) if i >= 0]
    first = head[: min(ends)] if ends else head
    try:
        return parse_text(first.decode("latin-1")) if first else None
    except ParseError:
        return None


def received(iso: str) -> datetime:
    """A ``received_at`` header (ISO 8601, ``Z``) as a datetime; now when it is empty."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")) if iso else datetime.now(UTC)
