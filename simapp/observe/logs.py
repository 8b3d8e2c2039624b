"""Structured logs: text or JSON lines (LOG_FORMAT), one `outcome` line per simulation.

`logging_config` is handed to Faust's worker (the app's `logging_config` setting), which
applies it before it logs anything, so LOG_FORMAT=json holds from a worker's first line.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

outcome_log = logging.getLogger("simapp.outcome")

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
CHATTY_LOGGERS = ("LiteLLM", "litellm", "httpx", "aiokafka")  # their warnings still show


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


def logging_config(fmt: str, level: str = "INFO") -> dict[str, Any]:
    """A logging.config dict: JSON lines on stdout, or Faust's own text format (merged)."""
    quiet = {name: {"level": "WARNING"} for name in CHATTY_LOGGERS}
    if fmt != "json":
        return {"version": 1, "merge": True, "loggers": quiet, "root": {"level": level}}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"level": level, "handlers": ["json"]},
        "loggers": quiet,
    }


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
