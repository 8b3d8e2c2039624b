"""Fault windows opened on purpose, for tests only: SIMAPP_TEST_HOOKS=name[,name].

Nothing here runs unless a worker's environment names a hook; the app installs them at start.

- hold_resume: Faust's recovery seeks every partition to its committed offset, then resumes
  flow control, which empties the stream queues. Records the conductor queued in between are
  dropped without a trace (tests/test_offset_gaps.py). This hook keeps that window open after
  the seek until HOLD_MIN records are queued (at most HOLD_LIMIT seconds), so it happens every time.
- hold_drain: when flow control empties stream queues that held records (the loss hold_resume
  provokes), the drain loop holds the next record it hands on for HOLD_DRAIN seconds, as it
  does when it is blocked on a full 10,000-event stream buffer: the lost records, sought back,
  are slow to come (tests/test_offset_gaps.py). The gap rule must wait for them, not pass them.
- kill_before_batch_report: the progress agent SIGKILLs its own worker when a finished batch's
  report is due, before the batch record is sent (`crash_point`; tests/test_report_e2e.py):
  the next owner must send it, once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

log = logging.getLogger(__name__)

ENV = "SIMAPP_TEST_HOOKS"
HOLD_LIMIT = 5.0
HOLD_MIN = 3  # records queued before the resume: more than the test's actors can take at once
HOLD_DRAIN = 30.0  # seconds; far past the 12 s (3 seeks 3 s apart) after which a gap was passed


def requested() -> set[str]:
    return {name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip()}


def crash_point(name: str) -> None:
    """SIGKILL this worker here when SIMAPP_TEST_HOOKS names `name` (no flush, no goodbye)."""
    if name in requested():
        log.warning("test hook %s: SIGKILL", name)
        os.kill(os.getpid(), signal.SIGKILL)


def install(app: Any) -> None:
    hooks = requested()
    if "hold_resume" in hooks:
        _hold_resume(app)
    if "hold_drain" in hooks:
        _hold_drain()
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


def _hold_drain() -> None:
    from faust.transport.consumer import Consumer

    from simapp.kafka.recovery import LedgerFlowControl

    hold = {"until": 0.0}
    clear = LedgerFlowControl.clear

    def clear_then_hold(self: Any) -> None:
        lost = sum(queue.qsize() for queue in self._queues)
        clear(self)
        if lost:
            hold["until"] = time.monotonic() + HOLD_DRAIN
            log.warning(
                "test hook hold_drain: %d queued records cleared; the drain loop waits %.0f s",
                lost,
                HOLD_DRAIN,
            )

    getmany = Consumer.getmany

    async def held_getmany(self: Any, timeout: float) -> Any:  # noqa: ASYNC109 - Faust's
        async for item in getmany(self, timeout):
            wait = hold["until"] - time.monotonic()
            if wait > 0:  # the next record waits, whichever fetch it came from
                await asyncio.sleep(wait)
                hold["until"] = 0.0
                log.warning("test hook hold_drain: the drain loop goes on")
            yield item

    LedgerFlowControl.clear = clear_then_hold
    Consumer.getmany = held_getmany
