"""Prices per token from LiteLLM's cost map, without importing LiteLLM.

LiteLLM ships its cost map as a JSON file inside the package; reading that file costs a few
milliseconds once, where `import litellm` costs ~2.5 s and ~195 MB. The direct OpenAI-protocol
route and `submit --estimate` use it; each model is looked up once.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COST_MAP_FILE = "model_prices_and_context_window_backup.json"


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per token, and the context window when the map knows it."""

    input_per_token: float
    output_per_token: float
    max_input_tokens: int | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input_per_token + completion_tokens * self.output_per_token


@cache
def _cost_map() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / COST_MAP_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("LiteLLM cost map unreadable (%s): costs will be unknown", exc)
        return {}
    return data if isinstance(data, dict) else {}


@cache
def price_of(model: str) -> ModelPrice | None:
    """The model's price, trying the name as given and without a provider prefix
    ('openai/gpt-4' -> 'gpt-4'); None for a model the map does not price."""
    cost_map = _cost_map()
    candidates = [model]
    if "/" in model:
        candidates.append(model.split("/", 1)[1])
    for name in candidates:
        entry = cost_map.get(name)
        if not isinstance(entry, dict):
            continue
        try:
            price = ModelPrice(
                float(entry["input_cost_per_token"]),
                float(entry["output_cost_per_token"]),
                _int_or_none(entry.get("max_input_tokens")),
            )
        except (KeyError, TypeError, ValueError):
            continue
        return price
    return None


def cost_of(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    price = price_of(model)
    return None if price is None else price.cost(prompt_tokens, completion_tokens)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
