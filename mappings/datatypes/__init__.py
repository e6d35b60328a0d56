"""Layer 1: v2 datatype converters (small typed functions, one IG datatype map each)."""

from mappings.datatypes.coded import coding_system, cwe_to_codeable_concept
from mappings.datatypes.demographics import xad_to_address, xpn_to_human_name, xtn_to_contact_point
from mappings.datatypes.entities import pl_to_location, sender_organization, xcn_to_practitioner, xon_to_organization
from mappings.datatypes.identifiers import cx_to_identifier, hd_system, identifier_key, is_nam, well_formed_nam
from mappings.datatypes.primitives import BadTimestamp, dtm, to_date, to_datetime, to_instant, value

__all__ = [
    "BadTimestamp", "coding_system", "cwe_to_codeable_concept", "cx_to_identifier", "dtm", "hd_system",
    "identifier_key", "is_nam", "pl_to_location", "sender_organization", "to_date", "to_datetime", "to_instant",
    "value", "well_formed_nam", "xad_to_address", "xcn_to_practitioner", "xon_to_organization",
    "xpn_to_human_name", "xtn_to_contact_point",
]
