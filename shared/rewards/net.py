"""Where an http reward may connect: public addresses only, unless the operator allows more.

A task's scorer URL is chosen by whoever creates the task, and the teacher calls it from inside
the deployment; left open, it reaches the cloud metadata service (169.254.169.254), the database
or anything else on loopback and the private network. So every address the scorer's host
resolves to must be public — not private, loopback, link-local, shared (CGNAT), unspecified,
multicast, reserved or documentation space, in IPv4 or IPv6, including IPv4 embedded in IPv6
(mapped, compatible, 6to4, NAT64, Teredo: the embedded address must be public too) — unless the operator allows it
(`DSC_REWARD_HTTP_ALLOW_PRIVATE`, or hosts and CIDRs in `DSC_REWARD_HTTP_ALLOW`).

The check runs when a task is created and again on every connection the reward opens, on the
address actually connected to (shared/rewards/http.py), so a name that resolves elsewhere later
(DNS rebinding) is still refused.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Iterable, Union
from urllib.parse import urlsplit

from shared.errors import InvalidRequest

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d; Python calls ::127.0.0.1 global


class TargetRefused(InvalidRequest):
    """The scorer's address is not one the operator lets rewards reach."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (and may route to)."""
    found = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if any(address in network for network in _NAT64):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def is_public(address: IPAddress) -> bool:
    """True only for a globally routable unicast address (and whatever IPv4 it embeds)."""
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in network for network in _NAT64[1:]):  # local-use NAT64: a private translator
            return False
        if address in _IPV4_COMPATIBLE:  # ::, ::1 and the deprecated ::a.b.c.d: never a scorer
            return False
        if not all(is_public(inner) for inner in _embedded_ipv4(address)):
            return False
    return address.is_global and not address.is_multicast


def parse_allow_entry(entry: str) -> IPNetwork | str:
    """A CIDR (or single address) as a network, anything else as a lower-case host name."""
    entry = entry.strip()
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        pass
    host = entry.lower().rstrip(".")
    if not host or "/" in host or ":" in host or any(char.isspace() for char in host):
        raise ValueError(f"{entry!r} is neither a host name nor a CIDR such as 10.0.0.0/8")
    return host


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (the system resolver; IP literals as themselves)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[IPAddress, None] = {}
    for *_rest, sockaddr in infos:
        seen[ipaddress.ip_address(sockaddr[0].split("%", 1)[0])] = None  # drop an IPv6 zone id
    return list(seen)


@dataclass(frozen=True)
class NetworkPolicy:
    """The operator's rule for reward connections; the default allows public addresses only."""

    allow_private: bool = False
    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, *, allow_private: bool = False, allow: Iterable[str] = ()) -> NetworkPolicy:
        entries = [parse_allow_entry(entry) for entry in allow]
        return cls(
            allow_private=allow_private,
            hosts=frozenset(entry for entry in entries if isinstance(entry, str)),
            networks=tuple(entry for entry in entries if not isinstance(entry, str)),
        )

    def permits(self, host: str, address: IPAddress) -> bool:
        if self.allow_private or is_public(address):
            return True
        return host.lower().rstrip(".") in self.hosts or any(address in network for network in self.networks)

    def addresses(self, host: str, port: int) -> list[IPAddress]:
        """The addresses to connect to; TargetRefused if any address of `host` is not permitted
        (all of them, so the choice among several cannot be steered). socket.gaierror if it does
        not resolve."""
        found = resolve(host, port)
        refused = [address for address in found if not self.permits(host, address)]
        if refused:
            raise TargetRefused(
                f"http reward host {host!r} resolves to {', '.join(map(str, refused))}, which is not a public address; "
                "the operator allows it with DSC_REWARD_HTTP_ALLOW_PRIVATE=true or DSC_REWARD_HTTP_ALLOW",
                param="reward.url",
            )
        return found

    def check_url(self, url: str) -> None:
        """The check at task creation: the URL's host must resolve, to permitted addresses only."""
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.hostname or ""
        try:
            self.addresses(host, port)
        except socket.gaierror:
            raise InvalidRequest(f"http reward host {host!r} does not resolve", param="reward.url") from None
