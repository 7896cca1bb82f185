"""Who is asking: the peer address, or the client named by a trusted proxy's X-Forwarded-For."""

from __future__ import annotations

import functools
import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from starlette.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
UNKNOWN = "unknown"


def in_networks(address: str, networks: Sequence[Network]) -> bool:
    if not networks:
        return False
    try:
        ip = _parse(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


# Clients come back: parsing an address costs more than the membership test.
_parse = functools.lru_cache(maxsize=4096)(ipaddress.ip_address)


def client_ip(scope: Scope, trusted_proxies: Sequence[Network]) -> str:
    """The client's IP address.

    X-Forwarded-For is honoured only when the peer is a trusted proxy; then the address is the
    right-most one that is not itself a trusted proxy (the left part is the client's to forge).
    """
    client = scope.get("client")
    peer = client[0] if client else UNKNOWN
    if not trusted_proxies or not in_networks(peer, trusted_proxies):
        return peer
    forwarded = [
        value.decode("latin-1") for name, value in scope["headers"] if name == b"x-forwarded-for"
    ]
    hops = [h.strip() for line in forwarded for h in line.split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            address = str(ipaddress.ip_address(hop))
        except ValueError:
            return peer  # a malformed chain: trust nothing in it
        if not in_networks(address, trusted_proxies):
            return address
    return peer
