"""The durable event log: the embedded SQLite log or Kafka, behind one small interface.

``append``/``append_many`` return only once the records are durable (fsync'd, or acks=all).
Consumers belong to a group; ``poll`` returns records, ``commit`` stores the offsets of everything
returned so far. Topic names passed in are full names (``settings.topic("hl7v2.in")``).

SQL lives here and in gateway/fhirstore/ only (tests/test_sql_boundary.py): besides the embedded
log, ``walcheckpoint.py`` (background WAL checkpoints of the SQLite files), ``tail.py`` (the
console's bounded reads of the embedded log) and ``audit_store.py`` (the audit trail's file).
"""

from gateway.eventlog.base import Consumer, EventLog, OutRecord, Record

__all__ = ["Consumer", "EventLog", "OutRecord", "Record"]
