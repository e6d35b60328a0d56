"""What each console path needs: the entries of the HTTP guard's route table (gateway/security/access.py
turns a :class:`ConsoleAccess` into its ``Route``; the console keeps its own table here, as data).

    GET /console, /console/, /console/static/*    open: the shell and its files hold no data
    GET /console/api/feeds                        metrics.r      hospital IT: senders and counts, no patient
    GET /console/api/alerts/stream                defi-sante.r   NOT audited: it carries ids only, and the
                                                                 guard holds an audited response until it
                                                                 ends (a stream would never be sent); each
                                                                 alert is read through the audited route below
    GET /console/api/clients/{id}[/enroll-form]   defi-sante.r   audited, target Patient/{id}
    GET /console/api/…                            defi-sante.r   audited (each answer names its Patients in
                                                                 ``patient``/``subject``, which the audit reads)
    anything else under /console                  None: the guard's default (deny)

Case managers hold ``system/defi-sante.rs`` (reads) and ``system/defi-sante.c`` (the enroll
operation, posted to /fhir as before); hospital IT holds ``system/metrics.r``. No new scope.
"""

from __future__ import annotations

from dataclasses import dataclass

BASE = "/console"


@dataclass(frozen=True, slots=True)
class ConsoleAccess:
    """``open``, or the SMART ``letters`` needed on the pseudo-resource ``resource``; ``audited``
    requests get an AuditEvent (``patient``: the Patient id the path names, if any)."""

    open: bool = False
    resource: str = ""
    letters: str = ""
    audited: bool = False
    patient: str = ""


def console_access(method: str, path: str) -> ConsoleAccess | None:
    """The requirement of ``method path`` under /console; None = not granted here (deny by default)."""
    path = "/" + path.strip("/")
    if method.upper() not in ("GET", "HEAD") or not (path == BASE or path.startswith(BASE + "/")):
        return None
    rest = path[len(BASE):].strip("/").split("/") if path != BASE else []
    if not rest or rest[0] == "static":
        return ConsoleAccess(open=True)
    if rest[0] != "api" or len(rest) < 2:
        return None
    if rest[1] == "feeds":
        return ConsoleAccess(resource="metrics", letters="r")
    if rest[1:] == ["alerts", "stream"]:
        return ConsoleAccess(resource="defi-sante", letters="r")
    patient = rest[2] if rest[1] == "clients" and len(rest) >= 3 else ""
    return ConsoleAccess(resource="defi-sante", letters="r", audited=True, patient=patient)
