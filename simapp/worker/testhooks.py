"""Fault windows opened on purpose, for tests only: SIMAPP_TEST_HOOKS=name[,name].

Nothing here runs unless a worker's environment names a hook; the app installs them at start.

- hold_resume: Faust's recovery seeks every partition to its committed offset, then resumes
  flow control, which empties the stream queues. Records the conductor queued in between are
  dropped without a trace (tests/test_offset_gaps.py). This hook keeps that window open after
  the seek until HOLD_MIN records are queued (at most HOLD_LIMIT seconds), so it happens every time.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

ENV = "SIMAPP_TEST_HOOKS"
HOLD_LIMIT = 5.0
HOLD_MIN = 3  # records queued before the resume: more than the test's actors can take at once


def requested() -> set[str]:
    return {name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip()}


def install(app: Any) -> None:
    hooks = requested()
    if "hold_resume" in hooks:
        _hold_resume(app)
    if hooks:
        log.warning("test hooks installed: %s", ", ".join(sorted(hooks)))


def _hold_resume(app: Any) -> None:
    from faust.transport.consumer import Consumer

    from simapp.kafka.committer import SafeCommitConsumer

    for cls in (Consumer, SafeCommitConsumer):
        original = cls.__dict__.get("perform_seek")
        if original is None:  # inherited: the base class's patch covers it
            continue

        async def perform_seek(self: Any, _original: Any = original) -> None:
            await _original(self)
            # only in recovery (flow already resumed), not getmany's seek while flow is off
            if self.flow_active and app.flow_control.is_active():
                queued = await _wait_for_queued(app)
                log.warning("test hook hold_resume: %d records queued before the resume", queued)

        cls.perform_seek = perform_seek


async def _wait_for_queued(app: Any) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HOLD_LIMIT
    while True:
        queued = sum(queue.qsize() for queue in list(app.flow_control._queues))
        if queued >= HOLD_MIN or loop.time() >= deadline:
            return queued
        await asyncio.sleep(0.01)
