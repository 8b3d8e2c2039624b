"""Which callback URLs simapp may POST to.

Events are untrusted: a callback URL is a request to make an HTTP call from inside our network,
so it must be http(s) and its host must pass an allowlist (`CALLBACK_ALLOWED_HOSTS`: host names,
`*.domain` wildcards and CIDRs). Without an allowlist, any public host is allowed but every
address that is not globally routable is refused (the address rule of
simapp/outbound/addresses.py), also when a name resolves to one (simapp/delivery/callbacks.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from simapp.outbound.addresses import HostList, ip_of, is_internal_host


class CallbackPolicy:
    """Checks one callback URL; `check` returns None when allowed, else why not."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed = HostList(allowed)
        self.restricted = bool(self.allowed)

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
        if self.restricted:
            if self.allowed.has_name(host):
                return None
            return f"host {host!r} is not in CALLBACK_ALLOWED_HOSTS"
        if is_internal_host(host):
            kind = "address" if ip_of(host) is not None else "host"
            shown = host if kind == "address" else repr(host)
            return f"{kind} {shown} is internal (set CALLBACK_ALLOWED_HOSTS to allow it)"
        return None
