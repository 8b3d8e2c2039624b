"""Which callback URLs simapp may POST to.

Events are untrusted: a callback URL is a request to make an HTTP call from inside our network,
so it must be http(s) and its host must pass an allowlist (`CALLBACK_ALLOWED_HOSTS`: host names,
`*.domain` wildcards and CIDRs). Without an allowlist, any public host is allowed but every
address that is not globally routable is refused (loopback, private, link-local and cloud
metadata, shared, reserved), also when a name resolves to one (simapp/delivery/callbacks.py).
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


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_internal_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Anything not globally routable (loopback, private, link-local and cloud metadata,
    shared/CGNAT, documentation, reserved), and multicast; IPv6 forms that embed an IPv4
    address (mapped, NAT64, 6to4, Teredo) are judged by that address."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        elif addr in _NAT64:
            addr = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        elif addr.sixtofour is not None:
            addr = addr.sixtofour
        elif addr.teredo is not None:
            addr = addr.teredo[1]
    return not addr.is_global or addr.is_multicast


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
