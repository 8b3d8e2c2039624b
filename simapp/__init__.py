"""simapp: LLM conversation simulations from Kafka, under a strict rate limit.

`faust -A simapp worker` looks up `simapp.app`: the Faust app, built in simapp/worker/application.py
on first access, so that light modules (the mock LLM, the sink, the settings) do not pay for
Faust's import.
"""

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from simapp.worker.application import app

        return app
    raise AttributeError(name)
