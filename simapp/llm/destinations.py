"""Where a model's requests would go, and which models an event may name.

One rule for every model an event names (`model`, `assistant.model`, `user.model`,
`judge.model`), checked when the event is decoded, before any call:

- `ALLOWED_MODELS`: glob patterns (`gpt-4o*`, `anthropic/*`); a miss is `unknown_model`.
- `ALLOWED_PROVIDERS`: the provider a name goes to; a miss is `unknown_model`.
- On the LiteLLM route without `LLM_BACKEND_URL`, where LiteLLM would send it: a destination
  that is not globally routable is refused (`invalid_field`) unless `LLM_ALLOWED_INTERNAL_HOSTS`
  names it (the callback URLs' address rule, simapp/outbound/addresses.py). So are names
  LiteLLM cannot route, and providers that log in interactively when resolved (GitHub Copilot,
  ChatGPT) unless `ALLOWED_PROVIDERS` names them.

Where a name goes:

- With `LLM_BACKEND_URL` (the direct route, or LLM_ROUTE=litellm sending `openai/<model>`),
  every model goes to that backend; its provider is the name's prefix before `/` (a LiteLLM
  proxy's convention), else `openai`.
- Without, LiteLLM's provider for the name (`litellm.get_llm_provider`), sent to: the api_base
  LiteLLM resolves for it (a provider's fixed default, or its variable such as
  OLLAMA_API_BASE); else the base-URL variable LiteLLM reads for that provider at call time
  (`<PROVIDER>_API_BASE`, and the few named otherwise, `BASE_VARIABLES`); else LiteLLM's
  built-in default where that is on this machine (`LOCAL_DEFAULTS`, read off litellm 1.110.2);
  else the provider's public service, whose URL LiteLLM builds at call time (`base_url` None).
  The LLM session checks the address again when it connects (simapp/llm/session.py).

LiteLLM is imported on the first resolution on its route only: the direct route never loads it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Protocol
from urllib.parse import urlsplit

from simapp.config import Settings
from simapp.llm.session import INTERNAL_HOSTS_SETTING
from simapp.outbound.addresses import HostList, is_internal_host, origin_of

OPENAI_BASE_URL = "https://api.openai.com/v1"  # LLM_ROUTE=openai without LLM_BACKEND_URL
# Providers whose resolution in LiteLLM starts an OAuth device flow (network, blocking, a
# person to confirm): never resolved for an event (litellm.constants names them too).
LOGIN_PROVIDERS = frozenset({"github_copilot", "chatgpt"})
# Base-URL variables LiteLLM reads at call time for providers get_llm_provider leaves without
# one, where the name is not <PROVIDER>_API_BASE / <PROVIDER>_BASE_URL.
BASE_VARIABLES: dict[str, tuple[str, ...]] = {
    "ollama_chat": ("OLLAMA_API_BASE",),
    "bedrock": ("AWS_BEDROCK_RUNTIME_ENDPOINT",),
    "watsonx": ("WATSONX_URL",),
    "huggingface": ("HF_API_BASE",),
}
# LiteLLM 1.110.2's defaults on this machine that get_llm_provider does not report (ollama,
# lemonade, llamafile, docker_model_runner and langgraph it does).
LOCAL_DEFAULTS = {
    "ollama_chat": "http://localhost:11434",  # llms/ollama/chat/transformation.py
    "langflow": "http://localhost:7860",  # llms/langflow/chat/transformation.py
    "xinference": "http://127.0.0.1:9997/v1",  # main.py
}
CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Destination:
    """Where one model name's requests go."""

    provider: str
    base_url: str | None  # None: the provider's public service, built by LiteLLM per call
    login: bool = False  # the provider logs in interactively when resolved

    @property
    def host(self) -> str:
        """The destination's host ("" when there is no base URL or it has none)."""
        if self.base_url is None:
            return ""
        url = self.base_url if "://" in self.base_url else f"http://{self.base_url}"
        try:
            return (urlsplit(url).hostname or "").lower()
        except ValueError:
            return ""

    @property
    def shown(self) -> str:
        """The destination for messages: scheme, host and port only."""
        if self.base_url is None:
            return f"{self.provider}'s service"
        url = self.base_url if "://" in self.base_url else f"http://{self.base_url}"
        return origin_of(url)


class Unroutable(Exception):
    """LiteLLM cannot route this name."""


class Destinations(Protocol):
    by_name: bool  # routed by model name (LiteLLM without a backend URL)

    def resolve(self, model: str) -> Destination: ...


class BackendDestinations:
    """Every model goes to the one configured backend."""

    by_name = False

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def resolve(self, model: str) -> Destination:
        provider = model.split("/", 1)[0] if "/" in model else "openai"
        return Destination(provider, self.base_url)


class LiteLLMDestinations:
    """Where LiteLLM would send a name (module docstring), cached per name."""

    by_name = True

    def __init__(self, pool_size: int) -> None:
        self.pool_size = pool_size
        self._cache: dict[str, Destination | Unroutable] = {}

    def resolve(self, model: str) -> Destination:
        found = self._cache.get(model)
        if found is None:
            try:
                found = self._resolve(model)
            except Unroutable as exc:
                found = exc
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[model] = found
        if isinstance(found, Unroutable):
            raise found
        return found

    def _resolve(self, model: str) -> Destination:
        prefix = model.split("/", 1)[0] if "/" in model else ""
        if prefix in LOGIN_PROVIDERS:
            return Destination(prefix, None, login=True)
        from simapp.llm.litellm_route import import_litellm

        litellm = import_litellm(self.pool_size)
        try:
            _name, provider, _key, api_base = litellm.get_llm_provider(model)
        except Exception:  # noqa: BLE001 - LiteLLM's BadRequestError for a name it cannot map
            raise Unroutable("names no provider LiteLLM knows (write provider/model)") from None
        if provider in LOGIN_PROVIDERS:
            return Destination(provider, None, login=True)
        base = api_base or base_variable(provider) or LOCAL_DEFAULTS.get(provider)
        return Destination(provider, base or None)


def base_variable(provider: str) -> str | None:
    """The operator's base URL for a provider, from the variables LiteLLM reads."""
    stem = provider.upper().replace("-", "_")
    names = (*BASE_VARIABLES.get(provider, ()), f"{stem}_API_BASE", f"{stem}_BASE_URL")
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def destinations_for(s: Settings) -> Destinations:
    """Where this worker's route sends a model name."""
    if s.llm_backend_url is not None:
        return BackendDestinations(s.llm_backend_url)
    if s.direct_llm_route:
        return BackendDestinations(OPENAI_BASE_URL)
    return LiteLLMDestinations(s.llm_pool_size)


class ModelPolicy:
    """Which model names an event may use on this worker (module docstring)."""

    def __init__(
        self, s: Settings, destinations: Destinations | None = None, *, resolve: bool = True
    ) -> None:
        """`resolve=False` checks ALLOWED_MODELS only (no provider, no destination)."""
        self.patterns = tuple(s.allowed_models)
        self.providers = frozenset(p.lower() for p in s.allowed_providers)
        self.internal_allowed = HostList(s.llm_allowed_internal_hosts)
        self.destinations = destinations or destinations_for(s)
        self._resolve = resolve and (bool(self.providers) or self.destinations.by_name)

    def refusal(self, model: str) -> tuple[str, str] | None:
        """(reason, why) when an event may not name `model`, else None; `why` follows the
        model's name in a message ("'x' is not in ALLOWED_MODELS")."""
        if self.patterns and not any(fnmatchcase(model, p) for p in self.patterns):
            return "unknown_model", "is not in ALLOWED_MODELS"
        if not self._resolve:
            return None
        try:
            where = self.destinations.resolve(model)
        except Unroutable as exc:
            return "invalid_field", str(exc)
        if self.providers and where.provider not in self.providers:
            return (
                "unknown_model",
                f"goes to provider {where.provider!r}, which is not in ALLOWED_PROVIDERS",
            )
        if where.login and where.provider not in self.providers:
            return (
                "invalid_field",
                f"goes to provider {where.provider!r}, which logs in interactively when called "
                "(name it in ALLOWED_PROVIDERS to allow it)",
            )
        problem = self.address_refusal(where)
        return ("invalid_field", problem) if problem is not None else None

    def address_refusal(self, where: Destination) -> str | None:
        """Why a destination's address is refused (the LiteLLM route by name), else None."""
        if not self.destinations.by_name or where.base_url is None:
            return None
        host = where.host
        if not host:
            return f"would be sent to a malformed URL (LiteLLM provider {where.provider})"
        if is_internal_host(host) and not self.internal_allowed.has_name(host):
            return (
                f"would be sent to {where.shown} (LiteLLM provider {where.provider}), an "
                f"internal address (set {INTERNAL_HOSTS_SETTING} to allow it)"
            )
        return None
