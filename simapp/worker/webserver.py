"""The web server of a worker: Faust's aiohttp server with simapp's views only, and the access
token (README, "Monitoring").

Faust registers views of its own when its web server starts (faust/web/base.py): `/table/...`
serves table rows (here the simulations table: a running conversation's system prompt,
persona, intent and every turn), `/router/...` every worker's address and partitions, and with
`debug` its statistics, `/graph/` and `/performance/`. Their switches (`web_tables_enabled`,
...) are read from the environment (`APP_WEB_TABLES_ENABLED`, `APP_DEBUG`), which wins over the
app's configuration, so `SimappWeb` applies none of Faust's blueprints: a worker serves what
simapp/web/views.py registers, nothing else (tests/test_web_security.py compares the routes
with the README's list).

With WEB_AUTH_TOKEN set, a middleware answers every request 401 with an empty body unless it
carries one `Authorization: Bearer <token>` header, unknown paths and methods included (a 404
would tell which routes exist). The one exception is the progress page, `GET /` and `HEAD /`:
static HTML without data, which asks for the token itself. Tokens are compared in constant
time, as SHA-256 digests (so not even the length shows); the token is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from faust.web.drivers.aiohttp import Web
from pydantic import SecretStr

# the progress page: a static file, no data; it asks for the token and sends it with its fetches
PUBLIC = frozenset({("GET", "/"), ("HEAD", "/")})
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="simapp"'}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def authorized(values: Iterable[str], token: str) -> bool:
    """Whether a request's Authorization header values present `token`: exactly one header,
    the scheme `Bearer` (in any case, RFC 7235), one space, the token."""
    values = list(values)
    if len(values) != 1:
        return False
    scheme, _, credentials = values[0].partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(_digest(credentials), _digest(token))


def bearer_auth(token: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """aiohttp middleware: 401 with an empty body (and the challenge) without the token."""

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.method, request.path) in PUBLIC:
            return await handler(request)
        if authorized(request.headers.getall("Authorization", ()), token):
            return await handler(request)
        return web.Response(status=401, headers=CHALLENGE)

    return require_token


class SimappWeb(Web):
    """Faust's aiohttp web server without Faust's own views; the token asked for when set."""

    default_blueprints = ()  # /router, /table
    production_blueprints = ()  # a `{"status": "OK"}` index at /
    debug_blueprints = ()  # statistics at / and /assignment/, /graph/
    optional_blueprints = ()  # /performance/

    def __init__(self, app: Any, *, token: SecretStr | None = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        if token is not None:
            self.web_app.middlewares.append(bearer_auth(token.get_secret_value()))
