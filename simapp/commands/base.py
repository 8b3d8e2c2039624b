"""How simapp's Faust commands run, and what they share.

A command runs on its own asyncio loop (not as a Faust worker service) and exits with a
status code: 0 ok, 1 the batch did not finish cleanly / no answer, 2 bad input. The commands
themselves: loadtest, submit, progress and dlq, one module each.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

from faust.cli import AppCommand, option

from simapp.commands.estimate import report_lines
from simapp.config import Settings
from simapp.kafka.clients import KafkaAccessError
from simapp.observe import follow as fl


class SimappCommand(AppCommand):
    """An app command that runs `run` on a plain asyncio loop and exits with its return code.

    Faust's default runs a command as a service inside a mode Worker, which always exits 0.
    """

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            code = asyncio.run(self.run(*self.args, *args, **{**self.kwargs, **kwargs}))
        except KafkaAccessError as exc:  # the brokers refused our TLS or SASL settings
            print(f"error: cannot use the Kafka brokers: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        raise SystemExit(code or 0)


def default_web_url(s: Settings) -> str:
    return f"http://127.0.0.1:{s.metrics_port}"


def broker_configured(s: Settings) -> bool:
    """KAFKA_BOOTSTRAP_SERVERS given in the environment or .env (not just the default)."""
    return "kafka_bootstrap_servers" in s.model_fields_set


def new_batch_id() -> str:
    return f"batch-{uuid.uuid4().hex[:8]}"


def batch_id_problem(batch_id: str) -> str | None:
    """Why an explicit --batch-id cannot be used (the event schema's id rules), or None."""
    from pydantic import TypeAdapter, ValidationError

    from simapp.simulation.schemas import Id

    try:
        TypeAdapter(Id).validate_python(batch_id)
    except ValidationError as exc:
        return f"--batch-id {batch_id!r} is not a valid batch id: {exc.errors()[0]['msg']}"
    return None


async def follow_batch(
    web_url: str,
    batch_id: str,
    *,
    sent: int | None,
    started: float,
    limit: float,
    should_stop: Any = None,
    token: Any = None,
) -> int:
    """Follow to the end, print the report; 0 when every simulation was delivered. `token`:
    the workers' WEB_AUTH_TOKEN, when they ask for one."""
    last = await asyncio.to_thread(
        fl.follow, web_url, batch_id, timeout=limit, should_stop=should_stop, token=token
    )
    wall = None
    if last and last.get("done") and last.get("finished_at"):
        # from our first send to the last finish, measured with the workers' clock
        wall = max(float(last["finished_at"]) - started, 0.0) or None
    r = fl.report(last, sent=sent, wall=wall)
    fl.print_report(r)
    expected = sent if sent is not None else r["total"]
    ok = r["done"] and r["failed"] == 0 and r["delivered"] == expected
    print("RESULT:", "OK, every simulation delivered" if ok else "NOT all delivered")
    return 0 if ok else 1


# Options shared by loadtest, submit and progress (faust's `option` is a reusable decorator).
FOLLOW_OPTION = option(
    "--follow/--no-follow", default=False, help="show live progress and a report"
)
WEB_URL_OPTION = option(
    "--web-url",
    default=None,
    help="worker web URL(s), comma-separated (default http://127.0.0.1:$METRICS_PORT)",
)
FOLLOW_TIMEOUT_OPTION = option(
    "--timeout",
    "follow_timeout",
    type=float,
    default=3600.0,
    show_default=True,
    help="follow at most this many seconds",
)


ESTIMATE_OPTION = option(
    "--estimate/--no-estimate",
    default=False,
    help="print the expected LLM calls, time and cost, and send nothing",
)


async def print_estimate(events: list[dict], s: Settings, workers: int) -> int:
    """The estimate of a batch (nothing is sent); history from the results topic if any."""
    from simapp.commands.estimate import (
        Figures,
        estimate,
        figures_from_results,
        read_recent_results,
    )
    from simapp.simulation.schemas import SimulationEvent

    figures = Figures()
    if broker_configured(s):
        figures = figures_from_results(await read_recent_results(s)) or figures
    parsed = [SimulationEvent.model_validate(e) for e in events]
    result = estimate(parsed, s, figures, workers)
    print("\n".join(report_lines(result, s)))
    return 0


MAX_REPEATS = 100
REPEATS_OPTION = option(
    "--repeats",
    type=int,
    default=1,
    show_default=True,
    help="send each scenario this many times (distinct ids, one batch; pass^K in the report)",
)


def repeated(event: dict[str, Any], repeats: int) -> list[dict[str, Any]]:
    """`repeats` copies of an event that play one scenario: ids `<id>-r<k>`, the scenario
    pinned (the event's scenario_id, else the hash of what the simulated user plays)."""
    if repeats == 1:
        return [dict(event)]
    from simapp.simulation.schemas import SimulationEvent

    scenario = SimulationEvent.model_validate(event).scenario
    return [
        {**event, "id": f"{event['id']}-r{k}", "scenario_id": scenario}
        for k in range(1, repeats + 1)
    ]
