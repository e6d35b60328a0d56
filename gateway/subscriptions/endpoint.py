"""Where notifications may go: server-side request forgery (SSRF) checks on ``channel.endpoint``.

A subscriber chooses the URL Pivot POSTs to, so without a check anyone allowed to create a
Subscription could make the gateway call its own admin ports, the internal network or the cloud
metadata service (``http://169.254.169.254/``). An endpoint is served only when

- it is an ``http`` or ``https`` URL with a host, and
- every address its host resolves to is public: not unspecified (``0.0.0.0``, ``::``), loopback
  (127.0.0.0/8, ``::1``), link-local (169.254.0.0/16 — cloud metadata —, fe80::/10), private
  (10/8, 172.16/12, 192.168/16, fc00::/7), multicast or otherwise non-global (100.64/10,
  documentation and reserved ranges). IPv4 addresses carried in IPv6 (``::ffff:a.b.c.d``, 6to4,
  NAT64 ``64:ff9b::/96``, Teredo) are judged as the IPv4 they carry.

Checked twice: when a client writes the Subscription through the FHIR API (422, see
``SubscriptionEngine.check_write``) and before every delivery attempt, since DNS answers change.
The delivery then goes to the address that was checked (the URL's host replaced by it, with the
original ``Host`` header and TLS server name), so a second lookup that a rebinding DNS server could
answer differently never happens. ``PIVOT_SUBSCRIPTION_ALLOW_PRIVATE=true`` lifts the address
checks (our tests' loopback receivers, a closed network); the scheme is always checked.
Messages name the problem, never the endpoint or the address (they are stored in
``Subscription.error`` and logged).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from gateway.subscriptions.model import SubscriptionInvalid

Resolver = Callable[[str, int], list[str]]
"""host, port → the addresses it resolves to (text), in the order to try; OSError when it does not."""
IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_ELEMENT = "Subscription.channel.endpoint"


class EndpointRefused(SubscriptionInvalid):
    """An endpoint notifications may not go to; ``reason`` is short (``loopback address``)."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"{_ELEMENT}: refused, {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Target:
    """One checked address to send a request to."""

    url: str  # the endpoint with the checked address in place of its host
    host: str  # the Host header: the endpoint's own host[:port]
    server_name: str | None  # https: the name the server's certificate must carry (and SNI)


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of ``host`` from the system resolver (getaddrinfo), without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))


def _carried_ipv4(ip: IP) -> ipaddress.IPv4Address | None:
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(ip: IP) -> str | None:
    """Why notifications may not go to ``ip`` (None when it is a public address)."""
    carried = _carried_ipv4(ip)
    if carried is not None and (problem := address_problem(carried)) is not None:
        return problem
    if ip.is_unspecified:
        return "unspecified address"
    if ip.is_loopback:
        return "loopback address"
    if ip.is_link_local:
        return "link-local address (169.254.0.0/16, fe80::/10: cloud metadata)"
    if ip.is_multicast:
        return "multicast address"
    if ip.is_private:
        return "private address"
    if not ip.is_global:
        return "non-public address"
    return None


def _url(endpoint: str) -> httpx.URL:
    try:
        url = httpx.URL(endpoint)
    except (httpx.InvalidURL, TypeError):
        raise EndpointRefused("not a URL", f"{_ELEMENT} must be an http(s) URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise EndpointRefused("not http(s)", f"{_ELEMENT} must be an http(s) URL") from None
    return url


class EndpointGuard:
    """The endpoint policy of one engine: ``allow_private`` from PIVOT_SUBSCRIPTION_ALLOW_PRIVATE."""

    def __init__(self, allow_private: bool = False, resolver: Resolver = system_resolver) -> None:
        self.allow_private = allow_private
        self.resolver = resolver

    def check(self, endpoint: str) -> None:
        """At write time: EndpointRefused unless notifications may go to ``endpoint``."""
        url = _url(endpoint)
        if not self.allow_private:
            self._addresses(url)

    def targets(self, endpoint: str) -> list[Target]:
        """At delivery time: the checked addresses to try, in order (EndpointRefused when none may be)."""
        url = _url(endpoint)
        host = url.netloc.decode("ascii")
        name = url.raw_host.decode("ascii") if url.scheme == "https" else None
        return [Target(str(url.copy_with(host=str(ip))), host, name) for ip in self._addresses(url)]

    def _addresses(self, url: httpx.URL) -> list[IP]:
        """Every address of the URL's host; refused when one of them is not public (unless allowed)."""
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            found = [ipaddress.ip_address(a) for a in self.resolver(url.raw_host.decode("ascii"), port)]
        except (OSError, UnicodeError, ValueError):
            found = []
        if not found:
            raise EndpointRefused("host does not resolve", f"{_ELEMENT}: its host does not resolve")
        if not self.allow_private:
            for ip in found:
                problem = address_problem(ip)
                if problem is not None:
                    raise EndpointRefused(problem, f"{_ELEMENT}: its host resolves to a {problem}; "
                                                   "notifications go to public addresses only")
        return found
