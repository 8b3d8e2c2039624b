"""One simulation, from the event's bytes to a delivered summary or a dead letter.

schemas (the event and summary, the strict decoder), conversation (the engine: assistant,
simulated user, judge), pipeline (one event's path), ledger (run, resume, skip, duplicate),
checkpoints (the simulations table's rows). No Faust here: the worker hands in its parts.
May import config, observe, limits, outbound, kafka (record bytes), llm and delivery.
"""
