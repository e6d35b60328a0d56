"""Layer 2 of the pharmacy mappings: segment builders (one IG segment map each, or our documented
choice where the IG snapshot has none). PID, PD1 and MSH use :mod:`mappings.segments` as is."""

from mappings.pharmacy.segments.administration import rxa_administrator, rxa_to_medication_administration
from mappings.pharmacy.segments.dispense import rxd_pharmacist, rxd_to_medication_dispense
from mappings.pharmacy.segments.order import (
    STOP_STATUSES,
    Order,
    orc_to_order,
    rxr_to_route,
    tq1_to_schedule,
    tq_field_schedule,
)
from mappings.pharmacy.segments.profile import PROFILE_URL, profile_extension, zpr_as_of
from mappings.pharmacy.segments.request import Group, prescription_identifier, rxe_to_medication_request

__all__ = [
    "PROFILE_URL", "STOP_STATUSES", "Group", "Order", "orc_to_order", "prescription_identifier", "profile_extension",
    "rxa_administrator", "rxa_to_medication_administration", "rxd_pharmacist", "rxd_to_medication_dispense",
    "rxe_to_medication_request", "rxr_to_route", "tq1_to_schedule", "tq_field_schedule", "zpr_as_of",
]
