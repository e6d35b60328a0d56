"""Helpers for end-to-end tests: a framed MLLP reader, ACK field access, FHIR polling."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx

START, END = b"\x0b", b"\x1c\x0d"


class FrameReader:
    """Reads whole MLLP frames from a socket (python-hl7's client returns a single recv)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def frame(self, timeout_s: float = 10.0) -> bytes:
        self.sock.settimeout(timeout_s)
        while END not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf.extend(chunk)
        end = self.buf.index(END)
        start = self.buf.find(START)
        frame = bytes(self.buf[start + 1 : end])
        del self.buf[: end + 2]
        return frame


def ack_field(ack: bytes, segment: str, field: int, encoding: str = "utf-8") -> str:
    """Field ``field`` of the first ``segment`` of an ACK (MSA-1 = ack_field(a, 'MSA', 1)).

    The field separator is read from the ACK's MSH-1: an ACK answers in the sender's delimiters.
    """
    text = ack.decode(encoding)
    sep = text[3] if text.startswith("MSH") and len(text) > 3 else "|"
    for line in text.replace("\n", "\r").split("\r"):
        parts = line.split(sep)
        if parts[0] == segment:
            return parts[field] if len(parts) > field else ""
    return ""


def port_bindable(port: int) -> bool:
    """A listener can bind ``port`` again (SO_REUSEADDR, as uvicorn and asyncio's servers set it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for(predicate: Any, timeout_s: float = 30.0, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError("condition not met in time")


def search(base: str, path: str, **params: str) -> dict[str, Any]:
    resp = httpx.get(f"{base}/fhir/{path}", params=params, timeout=10)
    resp.raise_for_status()
    data: dict[str, Any] = resp.json()
    return data


def entries(bundle: dict[str, Any], rtype: str | None = None) -> list[dict[str, Any]]:
    out = [e["resource"] for e in bundle.get("entry", [])]
    return [r for r in out if rtype is None or r["resourceType"] == rtype]


def visit_counts(fhir_base: str) -> dict[str, int]:
    """Encounters per visit number (identifier system ``urn:pivot:visit:…``), paging through every Encounter
    of a FHIR server (``fhir_base``: its base URL, e.g. ``http://127.0.0.1:8080/fhir``)."""
    counts: dict[str, int] = {}
    url: str | None = f"{fhir_base}/Encounter?_count=1000"
    while url:
        resp = httpx.get(url, timeout=30)
        resp.raise_for_status()
        page = resp.json()
        for entry in page.get("entry", []):
            for ident in entry["resource"].get("identifier", []):
                if str(ident.get("system", "")).startswith("urn:pivot:visit:"):
                    counts[ident["value"]] = counts.get(ident["value"], 0) + 1
        url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
    return counts
