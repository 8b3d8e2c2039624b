"""Two batches' summaries read back from the results topic and compared scenario by scenario,
for `faust -A simapp compare` (simapp/commands/compare.py) and the page's comparison
(`/compare/{baseline}/{candidate}/`, simapp/web/views.py). The statistics are
simapp/observe/comparison.py's; this is the reading: a group-less reader (simapp/kafka/reader.py)
from the start of the topic, each simulation once.
"""

from __future__ import annotations

import json
from typing import Any

from simapp.config import Settings
from simapp.kafka.reader import TopicReader
from simapp.observe.comparison import BOOTSTRAP, Scenario
from simapp.observe.comparison import compare as compare_scenarios


async def read_batches(s: Settings, batch_ids: list[str]) -> dict[str, dict[str, Scenario]]:
    """batch id -> scenario id -> Scenario, from the results topic (each simulation once)."""
    out: dict[str, dict[str, Scenario]] = {b: {} for b in batch_ids}
    needles = {b: f'"batch_id":"{b}"'.encode() for b in batch_ids}
    seen: set[str] = set()
    async with TopicReader(s) as reader:
        await reader.from_start(s.results_topic)
        async for record in reader.records():
            value = record.value or b""
            batch = next((b for b, n in needles.items() if n in value), None)
            if batch is None:
                continue
            try:
                data = json.loads(value)
            except ValueError:
                continue
            summary = data.get("summary") if isinstance(data, dict) else None
            if not isinstance(summary, dict) or data.get("batch_id") != batch:
                continue
            sim = str(summary.get("simulation_id"))
            if sim in seen:  # a summary written twice (a crash between two writes)
                continue
            seen.add(sim)
            facts = data.get("facts") or {}
            scenario = str(summary.get("scenario_id") or facts.get("scenario_id") or sim)
            out[batch].setdefault(scenario, Scenario()).add(summary, facts.get("persona"))
    return out


class NoSummaries(Exception):
    """A batch has no summary on the results topic (a typo, or the topic's retention)."""

    def __init__(self, s: Settings, batch_ids: list[str]) -> None:
        super().__init__(f"no summaries of {', '.join(batch_ids)} on {s.results_topic}")
        self.batch_ids = batch_ids


async def compare_batches(
    s: Settings, baseline: str, candidate: str, *, seed: int = 0, resamples: int = BOOTSTRAP
) -> dict[str, Any]:
    """The comparison of CANDIDATE with BASELINE (simapp/observe/comparison.py's `compare`),
    with the batch ids, seed and resamples that produced it; NoSummaries for an empty batch."""
    batches = await read_batches(s, [baseline, candidate])
    empty = [b for b, found in batches.items() if not found]
    if empty:
        raise NoSummaries(s, empty)
    result = compare_scenarios(
        batches[baseline], batches[candidate], resamples=resamples, seed=seed
    )
    result.update(baseline=baseline, candidate=candidate, seed=seed, resamples=resamples)
    return result
