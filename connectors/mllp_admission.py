"""Who gets an MLLP connection slot, and who gives one up when they are all taken.

Connections that never finish a frame (silent, or trickling a byte every few seconds) must not be
able to lock real senders out. The frame deadline and idle timeout of the listener bound how long
one such connection lives; this bounds how many slots they can hold meanwhile:

- **per address**: at most ``max_per_peer`` connections from one IP address; a newcomer beyond it
  takes the slot of that address's oldest unproven connection (a sender reconnecting while its
  old, half-open connection still holds a slot), else it is closed at once;
- **proven connections keep their slot**: a connection that has had a message accepted (AA) is
  *proven*; one that has not is *unproven* (it may be a real sender that just connected, or a
  trickler);
- **when all ``max_connections`` slots are taken**, a newcomer takes the slot of the *oldest
  unproven, not busy* connection (busy: its frame is in the intake now), which is closed. Peers
  with a clean history — an address whose connection had a message accepted since the listener
  started (the last 4,096 such addresses are remembered) — are protected: a newcomer from an
  unknown address may only take an unknown address's slot; a newcomer from a known address may
  take any unproven slot, unknown addresses' first. When no slot can be taken (all proven), the
  newcomer is closed.

Why oldest first: a real sender sends its message as soon as it connects and is proven within a
few milliseconds; a connection that has held its slot longest without an accepted message is the
likeliest to be a trickler. An attacker opening connections in a loop only evicts its own (older)
ones before it reaches a newcomer, and cannot take a known sender's slot at all.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

_REMEMBERED = 4096
LIMIT = "limit"
PEER_LIMIT = "peer_limit"


@dataclass(eq=False, slots=True)
class Slot:
    """One admitted connection: where from, since when, and whether it proved itself."""

    host: str
    opened: float
    close: Callable[[], None]  # aborts the connection (eviction)
    accepted: int = 0  # messages answered AA on this connection
    busy: bool = False  # a frame of it is in the intake now


class Admission:
    """Connection slots of one listener (one event loop: no locking)."""

    def __init__(self, max_connections: int, max_per_peer: int) -> None:
        self.max_connections = max_connections
        self.max_per_peer = max_per_peer
        self.slots: list[Slot] = []
        self._per_host: Counter[str] = Counter()
        self._known: OrderedDict[str, None] = OrderedDict()

    def admit(self, slot: Slot) -> tuple[str, Slot | None]:
        """("", evicted slot or None) when ``slot`` is admitted; (reason, None) when refused."""
        evicted = None
        if self._per_host[slot.host] >= self.max_per_peer:
            evicted = self._oldest([s for s in self.slots if s.host == slot.host and self._unproven(s)])
            if evicted is None:
                return PEER_LIMIT, None
        elif len(self.slots) >= self.max_connections:
            evicted = self._victim(slot.host)
            if evicted is None:
                return LIMIT, None
        if evicted is not None:
            self.release(evicted)
            evicted.close()
        self.slots.append(slot)
        self._per_host[slot.host] += 1
        return "", evicted

    def release(self, slot: Slot) -> None:
        """The connection ended (or was evicted); idempotent."""
        if slot in self.slots:
            self.slots.remove(slot)
            self._per_host[slot.host] -= 1
            if self._per_host[slot.host] <= 0:
                del self._per_host[slot.host]

    def proven(self, slot: Slot) -> None:
        """A message of ``slot`` was accepted: the connection and its address have a clean history."""
        slot.accepted += 1
        self._known[slot.host] = None
        self._known.move_to_end(slot.host)
        if len(self._known) > _REMEMBERED:
            self._known.popitem(last=False)

    def known(self, host: str) -> bool:
        return host in self._known

    def _victim(self, host: str) -> Slot | None:
        trusted = self.known(host)
        return self._oldest([s for s in self.slots if self._unproven(s) and (trusted or not self.known(s.host))])

    def _oldest(self, candidates: list[Slot]) -> Slot | None:
        """Unknown addresses' slots first, then the oldest."""
        return min(candidates, key=lambda s: (self.known(s.host), s.opened)) if candidates else None

    @staticmethod
    def _unproven(slot: Slot) -> bool:
        return not slot.accepted and not slot.busy
