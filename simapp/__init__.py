"""simapp: LLM conversation simulations from Kafka, under a strict rate limit.

`faust -A simapp worker` looks up `simapp.app`; it is imported lazily so that light modules
(the mock LLM server, the sink, the settings) do not pay for Faust and LiteLLM imports.
"""

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from simapp.application import app

        return app
    raise AttributeError(name)
