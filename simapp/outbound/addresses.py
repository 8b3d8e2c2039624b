"""The address rule for requests an event can point at, shared by callbacks and LLM providers.

An address that is not globally routable (loopback, private, link-local and cloud metadata,
shared/CGNAT, documentation, reserved, multicast, and the IPv6 forms embedding one) is
internal, and so are the names `localhost`, `*.localhost` and the metadata service's names.
The operator allows hosts with a `HostList` (host names, `*.domain` wildcards, CIDRs).
`GuardedResolver` applies the rule at connect time, so a public-looking name that resolves to
an internal address (DNS rebinding) is refused too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
INTERNAL_NAMES = frozenset({"localhost", "metadata.google.internal", "metadata"})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def ip_of(host: str) -> IPAddress | None:
    """The address a host literal stands for, or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_internal_address(addr: IPAddress) -> bool:
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


def is_internal_host(host: str) -> bool:
    """Whether a host (a name or an address literal) is internal without resolving it."""
    host = host.lower().rstrip(".")
    if host in INTERNAL_NAMES or host.endswith(".localhost"):
        return True
    addr = ip_of(host)
    return addr is not None and is_internal_address(addr)


class HostList:
    """Hosts an operator names: exact names, `*.domain` wildcards and CIDRs."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.names: set[str] = set()
        self.suffixes: list[str] = []
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            entry = entry.strip().lower()
            if "/" in entry:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            elif entry.startswith("*."):
                self.suffixes.append(entry[1:])
            elif entry:
                self.names.add(entry.strip("[]"))

    def __bool__(self) -> bool:
        return bool(self.names or self.suffixes or self.networks)

    def has_name(self, host: str) -> bool:
        host = host.lower().rstrip(".").strip("[]")
        if host in self.names or any(host.endswith(s) for s in self.suffixes):
            return True
        addr = ip_of(host)
        return addr is not None and self.has_address(addr)

    def has_address(self, addr: IPAddress) -> bool:
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            if self.has_address(addr.ipv4_mapped):
                return True
        return str(addr) in self.names or any(addr in net for net in self.networks)


class InternalAddressRefused(OSError):
    """A connection to an internal address that nothing allowed; never attempted."""


class GuardedResolver(AbstractResolver):
    """aiohttp's threaded resolver, refusing a name that resolves to an internal address
    unless `exempt(host, address)` says the operator allowed it. `setting` names the variable
    that allows hosts, for the message; `refuse` is the exception raised (an OSError becomes
    aiohttp's connection error; anything else passes through aiohttp untouched). IP literals
    never reach a resolver: check them before connecting."""

    def __init__(
        self,
        exempt: Callable[[str, IPAddress], bool],
        setting: str,
        refuse: type[Exception] = InternalAddressRefused,
    ) -> None:
        self.exempt = exempt
        self.setting = setting
        self.refuse = refuse
        self.inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict]:
        infos = await self.inner.resolve(host, port, family)
        for info in infos:
            addr = ipaddress.ip_address(info["host"])
            if is_internal_address(addr) and not self.exempt(host, addr):
                raise self.refuse(
                    f"{host} resolves to internal address {info['host']} "
                    f"(set {self.setting} to allow it)"
                )
        return infos

    async def close(self) -> None:
        await self.inner.close()


def origin_of(url: str) -> str:
    """scheme://host:port of a URL: what labels, log fields and messages may show of it (no
    credentials, path or query)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "<malformed URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme or 'http'}://{host}" + (f":{port}" if port is not None else "")
