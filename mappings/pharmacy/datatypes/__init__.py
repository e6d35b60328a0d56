"""Layer 1 of the pharmacy mappings: datatype converters (NM/CQ/TM, drug CWE, EI, RPT/TQ).

The general converters (CX, XPN, XCN, XON, CWE, DTM…) are those of :mod:`mappings.datatypes`,
imported, never copied.
"""

from mappings.pharmacy.datatypes.drugs import Drug, cwe_to_drug, ei_to_identifier, order_system, rx_system
from mappings.pharmacy.datatypes.quantities import (
    cq_to_duration,
    cq_to_quantity,
    field_quantity,
    nm,
    quantity,
    tm_to_time,
)
from mappings.pharmacy.datatypes.timing import Schedule, priority, repeat_pattern, tq_to_schedule

__all__ = [
    "Drug", "Schedule", "cq_to_duration", "cq_to_quantity", "cwe_to_drug", "ei_to_identifier", "field_quantity", "nm",
    "order_system", "priority", "quantity", "repeat_pattern", "rx_system", "tm_to_time", "tq_to_schedule",
]
