"""Who a request comes from and which host it was sent to, believing forwarding headers only from
the reverse proxies the operator names (DSC_TRUSTED_PROXIES): anyone can send X-Forwarded-For."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from starlette.requests import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Passed to uvicorn.Config: uvicorn would otherwise rewrite the client address from X-Forwarded-For
# for any peer on 127.0.0.1 (its default FORWARDED_ALLOW_IPS); here only DSC_TRUSTED_PROXIES decide.
UVICORN_PROXY_HEADERS_OFF = {"proxy_headers": False}


@lru_cache(maxsize=64)
def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _trusted(address: str | None, entries: tuple[str, ...]) -> bool:
    if not address or not entries:
        return False
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in network for network in _networks(entries))


def _peer(request: Request) -> str | None:
    return request.client.host if request.client else None


def _entries(request: Request) -> tuple[str, ...]:
    return tuple(request.app.state.settings.trusted_proxies)


def client_address(request: Request) -> str:
    """The client's address: the peer's, or behind trusted proxies the last X-Forwarded-For hop
    that is not one of them (the hops before it could be made up by the client)."""
    peer, trusted = _peer(request), _entries(request)
    if not _trusted(peer, trusted):
        return peer or "unknown"
    hops = [hop.strip() for value in request.headers.getlist("x-forwarded-for") for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer or "unknown"


def public_host(request: Request) -> str | None:
    """The host the client addressed: Host, or from a trusted proxy X-Forwarded-Host (else the
    host= of Forwarded), which a proxy that rewrites Host sets to the original."""
    if _trusted(_peer(request), _entries(request)):
        if forwarded := request.headers.get("x-forwarded-host"):
            return forwarded.split(",")[0].strip()
        for element in request.headers.get("forwarded", "").split(",")[:1]:
            for pair in element.split(";"):
                name, _, value = pair.strip().partition("=")
                if name.lower() == "host" and value:
                    return value.strip('"')
    return request.headers.get("host")
