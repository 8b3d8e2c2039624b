"""Structured logs: text or JSON lines (LOG_FORMAT), one `outcome` line per simulation."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

outcome_log = logging.getLogger("simapp.outcome")

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def configure(fmt: str, level: str = "INFO") -> None:
    """Switch every root handler to JSON lines when asked; set the level."""
    root = logging.getLogger()
    root.setLevel(level)
    if fmt == "json":
        formatter = JsonFormatter()
        if not root.handlers:
            root.addHandler(logging.StreamHandler())
        for handler in root.handlers:
            handler.setFormatter(formatter)
    # LiteLLM and aiokafka are chatty at INFO; their warnings still show.
    for name in ("LiteLLM", "litellm", "httpx", "aiokafka"):
        logging.getLogger(name).setLevel(logging.WARNING)


def log_outcome(simulation_id: str | None, outcome: str, **fields: Any) -> None:
    """The one line per simulation outcome (delivered, dead_lettered, skipped, rejected...)."""
    fields = {k: v for k, v in fields.items() if v is not None}
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    level = logging.INFO if outcome in ("delivered", "skipped_done") else logging.WARNING
    outcome_log.log(
        level,
        "simulation %s %s %s",
        simulation_id,
        outcome,
        text,
        extra={"simulation_id": simulation_id, "outcome": outcome, "at": time.time(), **fields},
    )
