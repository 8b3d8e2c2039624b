"""Table recovery that fails loudly, and end offsets that a broker cannot get wrong.

A worker whose table recovery cannot finish must not keep its partitions: it exits non-zero
(a supervisor restarts it) and the group rebalances them to the other workers. Two ways Faust
0.15 strands partitions instead (docs/reliability.md):

- a recovery step that outlives `broker_request_timeout` makes mode's `wait_first` report
  "stopped", Faust's recovery loop ends silently, and the worker stays in the group with its
  partitions paused forever. Here a timeout is an error, so the worker crashes and exits.
- a recovery that raises (e.g. ConsistencyError) crashes the worker, as it should, but says
  nothing of the cause or the fix; here the log says both.

End offsets: Faust takes a changelog's highwater from ListOffsets, and Tansu answers it with
the last batch's base offset + 1 when batches hold several records (docs/architecture.md,
"Tansu facts"). The consistency check then crashed workers in a loop (persisted offset above
that "highwater"). `verified_highwaters` asks the broker's Fetch answer instead, whose high
watermark is right.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import TopicPartition
from faust.exceptions import ConsistencyError
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery, ServiceStopped
from mode import Service
from mode.utils.queues import FlowControlEvent

from simapp.config import Settings
from simapp.kafka.reader import TopicReader

log = logging.getLogger(__name__)

VERIFY_TIMEOUT = 10.0  # seconds for all of them


class FailLoudRecovery(Recovery):
    """Faust's recovery, but a step that times out is an error, and errors are explained."""

    async def _wait(self, coro: Any, timeout: Any = None) -> None:  # noqa: ASYNC109 - Faust's
        try:
            await super()._wait(coro, timeout=timeout)
        except ServiceStopped:
            if self.should_stop or self._crashed.is_set():
                raise  # really stopping
            raise TimeoutError(
                f"a table recovery step did not finish within {timeout}s "
                "(broker_request_timeout); the worker stops so its partitions go to others"
            ) from None

    @Service.task
    async def _restart_recovery(self) -> None:
        try:
            await Recovery._restart_recovery.fun(self)  # Faust's loop (a ServiceTask)
        except ConsistencyError as exc:
            log.error(
                "table recovery failed: %s. The data directory (%s) holds table state of a "
                "changelog that is now shorter: the broker lost its data (Tansu keeps it in "
                "memory), the topics were recreated, or the directory was used by another "
                "app id. Fix: start the worker with an empty data directory (WORKER_DATADIR "
                "or faust --datadir). This worker exits so the others take its partitions.",
                exc,
                self.app.conf.datadir,
            )
            raise
        except Exception as exc:
            log.error(
                "table recovery failed (%s: %s); this worker exits so the others take its "
                "partitions",
                type(exc).__name__,
                exc,
            )
            raise
        if not self.should_stop:  # the loop ended without being stopped: never serve silently
            raise RuntimeError("table recovery ended while the worker runs")


class FailLoudTableManager(TableManager):
    """The app's TableManager (Faust's `TableManager` setting) with FailLoudRecovery."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = FailLoudRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class LedgerFlowControl(FlowControlEvent):
    """The app's flow control, telling the consumer when Faust empties the stream queues
    (records that were in them are lost to the actors and must be fetched again), and its
    listeners (the app's `flow_listeners`, called with is_active()) when the flow of events
    stops and resumes (a rebalance, a shutdown)."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._app = app

    def suspend(self) -> None:
        super().suspend()
        self._tell(False)

    def resume(self) -> None:
        super().resume()
        self._tell(True)

    def _tell(self, active: bool) -> None:
        listeners: list[Callable[[bool], None]] = getattr(self._app, "flow_listeners", [])
        for listener in listeners:
            try:
                listener(active)
            except Exception:  # a listener's bug must not stop a rebalance
                log.exception("flow control listener failed")

    def clear(self) -> None:
        lost = sum(queue.qsize() for queue in self._queues)
        super().clear()
        if lost:
            log.info(
                "flow control emptied the stream queues: %d fetched records never reached an "
                "actor; the ledger fetches them again",
                lost,
            )
        consumer = getattr(self._app, "_consumer", None)
        on_cleared = getattr(consumer, "on_queues_cleared", None)
        if on_cleared is not None:
            on_cleared()


async def verified_highwaters(settings: Settings, listed: Mapping[Any, int]) -> dict[Any, int]:
    """End offsets checked against a Fetch answer: fetch from just below the listed end and
    take the broker's high watermark (and the last record seen) when it is higher."""
    wanted = {tp: end for tp, end in listed.items() if end is not None and end > 0}
    out = dict(listed)
    if not wanted:
        return out
    parts = {TopicPartition(tp.topic, tp.partition): tp for tp in wanted}
    try:
        async with asyncio.timeout(VERIFY_TIMEOUT), TopicReader(settings) as reader:
            ends = await reader.end_offsets(list(parts))
        for tpk, tp in parts.items():
            out[tp] = max(wanted[tp], ends[tpk])
    except TimeoutError:
        log.warning("could not verify end offsets of %s; using ListOffsets' answer", wanted)
    for tp, end in out.items():
        if tp in wanted and end != wanted[tp]:
            log.info(
                "end offset of %s[%s]: the broker listed %s, its fetch says %s",
                tp.topic, tp.partition, wanted[tp], end,
            )  # fmt: skip
    return out
