"""Which callback URLs simapp may POST to.

Events are untrusted: a callback URL is a request to make an HTTP call from inside our network,
so it must be http(s) and its host must pass an allowlist (`CALLBACK_ALLOWED_HOSTS`: host names,
`*.domain` wildcards and CIDRs). Without an allowlist, any public host is allowed but loopback,
private, link-local (cloud metadata) and reserved addresses are refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

_BLOCKED_NAMES = frozenset({"localhost", "metadata.google.internal", "metadata"})


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_internal_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, private, link-local, reserved, multicast or unspecified."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (
        addr.is_loopback
        or addr.is_private
        or addr.is_link_local
        or addr.is_reserved
        or addr.is_multicast
        or addr.is_unspecified
    )


class CallbackPolicy:
    """Checks one callback URL; `check` returns None when allowed, else why not."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.names: set[str] = set()
        self.suffixes: list[str] = []
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allowed:
            entry = entry.strip().lower()
            if "/" in entry:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            elif entry.startswith("*."):
                self.suffixes.append(entry[1:])
            elif entry:
                self.names.add(entry)
        self.restricted = bool(self.names or self.suffixes or self.networks)

    def check(self, url: str) -> str | None:
        try:
            parts = urlsplit(url)
            port = parts.port  # raises ValueError on a bad port
        except ValueError as exc:
            return f"malformed URL ({exc})"
        if parts.scheme not in ("http", "https"):
            return f"scheme {parts.scheme or '(none)'!r} is not http or https"
        host = (parts.hostname or "").lower()
        if not host:
            return "URL has no host"
        if parts.username or parts.password:
            return "URL must not carry credentials"
        del port
        return self.check_host(host)

    def check_host(self, host: str) -> str | None:
        addr = _ip(host)
        if self.restricted:
            if host in self.names or any(host.endswith(s) for s in self.suffixes):
                return None
            if addr is not None and any(addr in net for net in self.networks):
                return None
            return f"host {host!r} is not in CALLBACK_ALLOWED_HOSTS"
        if host in _BLOCKED_NAMES or host.endswith(".localhost"):
            return f"host {host!r} is internal (set CALLBACK_ALLOWED_HOSTS to allow it)"
        if addr is not None and is_internal_address(addr):
            return f"address {host} is internal (set CALLBACK_ALLOWED_HOSTS to allow it)"
        return None
