"""One error tree for the whole gateway.

    GatewayError                    code  stage      ACK
    ├── ConfigError                 1000  start-up   (process refuses to start)
    ├── ParseError                  1200  parse      AR  (not HL7 / unreadable)
    │   ├── CharsetError            1210  parse      AE  (bytes invalid for the declared charset)
    │   └── IncompleteFrameError    1220  parse      AR  (an MLLP frame cut short by a new start block)
    ├── UnsupportedError            1300  route      AR  (message type/trigger we do not handle)
    ├── MapError                    1400  map        AE  (content we cannot map: missing PID, bad date)
    │   └── StructureError          1410  structure  AE  (a segment/field the structure requires is missing)
    ├── MapWarning                  1450  warning    AA + ERR severity W (not raised: MapResult.warnings)
    ├── ValidateError               1500  validate   AE  (a produced resource is not valid FHIR R4)
    ├── PublishError                1600  publish    AR  (log/Kafka unavailable: "system down")
    ├── DeliverError                1700  deliver    (dead letter after retries)
    └── StoreError                  1800  fhir store (OperationOutcome)

Every error carries a stable ``code``, an HL7 table 0357 ``hl7_code`` for ERR-3 and an optional
``location`` (segment id, sequence, field, component) for ERR-2. Messages never contain field
values: only ids, positions and codes (no health data in logs or ACKs).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Location:
    """ERR-2 error location (HL7 ERL): segment id, segment sequence, field, component."""

    segment: str
    sequence: int = 1
    field: int | None = None
    component: int | None = None

    def er7(self, comp: str = "^") -> str:
        parts = [self.segment, str(self.sequence)]
        if self.field is not None:
            parts.append(str(self.field))
            if self.component is not None:
                parts.extend(["1", str(self.component)])
        return comp.join(parts)

    def __str__(self) -> str:
        text = f"{self.segment}"
        if self.field is not None:
            text += f"-{self.field}"
            if self.component is not None:
                text += f".{self.component}"
        return text


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""

    code = 1000
    ack_code = "AE"
    hl7_code = "207"  # application internal error

    def __init__(self, message: str, *, location: Location | None = None, hl7_code: str | None = None):
        super().__init__(message)
        self.message = message
        self.location = location
        if hl7_code is not None:
            self.hl7_code = hl7_code

    def describe(self) -> str:
        where = f" at {self.location}" if self.location else ""
        return f"{self.message}{where}"


class ConfigError(GatewayError):
    """A setting is missing or invalid; the message names the setting."""

    code = 1000


class ParseError(GatewayError):
    """The bytes are not a readable HL7v2 ER7 message."""

    code = 1200
    ack_code = "AR"
    hl7_code = "100"


class CharsetError(ParseError):
    """Bytes invalid for the declared (or assumed) character set."""

    code = 1210
    ack_code = "AE"
    hl7_code = "102"


class IncompleteFrameError(ParseError):
    """An MLLP frame a new start block interrupted before its end block: dead-lettered, and answered
    (AR) only when its whole MSH segment came, so that the AR's MSA-2 is the sender's MSH-10."""

    code = 1220
    hl7_code = "207"


class UnsupportedError(GatewayError):
    """Message type, trigger event, version or processing id we do not handle."""

    code = 1300
    ack_code = "AR"
    hl7_code = "200"


class MapError(GatewayError):
    """The message is HL7 but its content cannot be mapped to FHIR."""

    code = 1400
    ack_code = "AE"
    hl7_code = "101"


class StructureError(MapError):
    """A segment (ERR-3 100) or field (101) the message structure requires is missing
    (mappings/codemaps/required-structure.json); checked before the message is stored."""

    code = 1410
    hl7_code = "100"


class MapWarning(GatewayError):
    """Not raised: something the mapping dropped while accepting the message (an end before its
    start), carried on MapResult.warnings; the ACK stays AA with an ERR of severity W (ERR-3 0
    "message accepted"), and the intake keeps a ``warning`` review entry in the dead letters."""

    code = 1450
    ack_code = "AA"
    hl7_code = "0"


class ValidateError(GatewayError):
    """A produced resource failed FHIR R4 validation; nothing is sent."""

    code = 1500
    ack_code = "AE"
    hl7_code = "207"


class PublishError(GatewayError):
    """The durable log (embedded or Kafka) could not store the message."""

    code = 1600
    ack_code = "AR"
    hl7_code = "207"


class DeliverError(GatewayError):
    """A FHIR server refused or could not be reached after retries."""

    code = 1700


class StoreError(GatewayError):
    """The embedded FHIR store refused a request; ``status`` is the HTTP status."""

    code = 1800

    def __init__(self, message: str, *, status: int = 400, issue_code: str = "processing"):
        super().__init__(message)
        self.status = status
        self.issue_code = issue_code
