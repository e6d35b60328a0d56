"""The embedded FHIR R4 store (SQLite) behind ``/fhir``.

    store.py         FhirStore: versioned resources, history, reads, one-transaction writes,
                     listeners called after each committed write (add_listener)
    writer.py        Writer: put / delete / conditional look-ups inside one transaction
    content.py       what is compared and stored of a resource: checked type/id, digest, body text
    params.py        search parameters as data (drives the index, the search, the CapabilityStatement)
    extract.py       index rows extracted from a resource on write
    query.py         request parameters → checked query (SQL clauses, result options, page tokens)
    search.py        running queries: keyset paging, _include, history
    dates.py         FHIR dates as millisecond ranges, search prefixes
    interactions.py  one interaction (read, search, create, update, conditional, delete)
    transaction.py   transaction and batch Bundles
    match.py         Matcher: does one resource (version) satisfy search criteria (subscriptions)
    careteam.py      who may learn about a client: the care-team and consent rule (subscribers, API clients)
    bundles.py       searchset / history / response Bundles, OperationOutcome
    capability.py    the CapabilityStatement
    queries.py       named read queries for the rules and the console (SQL stays in this package)
"""

from gateway.fhirstore.store import FhirStore
from gateway.fhirstore.writer import Outcome

__all__ = ["FhirStore", "Outcome"]
