"""What a worker prints besides its logs, in JSON lines when LOG_FORMAT=json.

Faust's `worker` command prints a banner table with click before the worker has set up
logging, and its Worker draws a progress spinner on stdout when the log level is WARNING or
above; no setting turns either into a log line. With LOG_FORMAT=json the banner becomes one
JSON line (the same fields) and the spinner is off, so every line a worker prints parses.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from simapp.observe.logs import JsonFormatter


class JsonConsoleWorker(faust.Worker):
    """faust.Worker without the terminal spinner (the app's `Worker` setting in JSON mode)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None


def json_banner(command: Any, worker: Any) -> None:
    """Replacement for the worker command's on_worker_created: the banner as a JSON line."""
    banner: dict[str, str] = {}
    for name, value in command._banner_data(worker):
        key = name.strip().strip("+").strip() or "cython"
        while key in banner:  # "transport" appears twice: the URL, then the driver
            key = f"driver_{key}"
        banner[key] = str(value).strip()
    record = logging.makeLogRecord(
        {
            "name": "faust.worker",
            "levelname": "INFO",
            "levelno": logging.INFO,
            "msg": "worker starting",
            "banner": banner,
        }
    )
    print(JsonFormatter().format(record), file=command.stdout, flush=True)


def use_json_console() -> None:
    from faust.cli.worker import worker as worker_command

    worker_command.on_worker_created = json_banner  # type: ignore[method-assign]
