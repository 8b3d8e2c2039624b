"""A built-in catalogue of varied personas, intents and iteration counts for load tests.

With `features`, events also bring what users of an evaluation suite send: the system under
test (a support agent's system prompt and sampling, or a configured endpoint), the simulated
user's extra instructions, `min_iterations`, and criteria for the judge.
"""

from __future__ import annotations

import random
import uuid

PERSONAS = [
    (
        "Technical Manager",
        "An experienced engineering manager focused on team productivity",
        ["analytical", "direct", "efficiency-focused"],
    ),
    (
        "First-time Founder",
        "Runs a two-person startup and has little time",
        ["impatient", "curious"],
    ),
    (
        "Retired Teacher",
        "Careful, polite and new to online services",
        ["patient", "detail-oriented"],
    ),
    ("Security Engineer", "Reviews every answer for risks", ["sceptical", "precise"]),
    ("Student", "Studies computer science and wants to learn", ["eager", "informal"]),
    ("Small Business Owner", "Runs a bakery and handles its website", ["practical", "busy"]),
    ("Data Scientist", "Works with large datasets every day", ["quantitative", "thorough"]),
    (
        "Customer Support Lead",
        "Wants clear steps to share with the team",
        ["empathetic", "organised"],
    ),
]
INTENTS = [
    "I need help optimizing our CI/CD pipeline",
    "How do I reset my account password?",
    "Can you explain how to set up a Kafka consumer group?",
    "I want to cancel my subscription but keep my data",
    "What is the best way to back up a PostgreSQL database?",
    "Help me write a polite reminder for an unpaid invoice",
    "Why is my Python script so slow on large files?",
    "Which laptop should I buy for video editing under 1500 dollars?",
    "How can I reduce our cloud bill this quarter?",
    "Explain the difference between TCP and UDP for a beginner",
]


ASSISTANT_PROMPTS = [
    "You are Acme's support agent. Be concise, polite and accurate. Never promise refunds; "
    "offer to open a ticket instead.",
    "You are a senior engineer helping colleagues. Give concrete steps and short examples.",
    "You are a friendly assistant for a small online shop. Keep answers under 80 words.",
]
USER_INSTRUCTIONS = [
    "You are in a hurry.",
    "You ask one follow-up question before you are satisfied.",
    "You are polite but sceptical of vague answers.",
]
CRITERIA = [
    "The assistant answered the user's question",
    "The assistant stayed polite throughout",
    "The assistant never promised a refund",
    "The assistant gave concrete steps",
]


def add_features(rng: random.Random, event: dict, endpoint: str | None) -> dict:
    """Give an event some of the optional fields (a fixed mix, reproducible with the rng)."""
    kind = rng.randrange(4)
    if kind == 0:
        return event  # the seed's fields only
    event["judge"] = {"criteria": rng.sample(CRITERIA, rng.randint(1, 3))}
    if kind == 1:
        event["assistant"] = {
            "system_prompt": rng.choice(ASSISTANT_PROMPTS),
            "temperature": round(rng.uniform(0.0, 0.7), 2),
            "max_tokens": 256,
        }
    elif kind == 2:
        event["user"] = {"instructions": rng.choice(USER_INSTRUCTIONS), "temperature": 0.9}
        event["min_iterations"] = min(2, event["max_iterations"])
    elif endpoint is not None:
        event["assistant"] = {"endpoint": endpoint}
    return event


def make_event(
    rng: random.Random,
    *,
    callback_url: str,
    model: str,
    batch_id: str,
    batch_size: int | None,
    max_iterations: int,
    index: int,
    features: bool = False,
    endpoint: str | None = None,
) -> dict:
    name, description, traits = rng.choice(PERSONAS)
    event = {
        "id": f"{batch_id}-{index:06d}-{uuid.UUID(int=rng.getrandbits(128)).hex[:8]}",
        "persona": {"name": name, "description": description, "traits": list(traits)},
        "intent": rng.choice(INTENTS),
        "max_iterations": rng.randint(2, max(2, max_iterations)),
        "callback_url": callback_url,
        "model": model,
        "batch_id": batch_id,
        **({"batch_size": batch_size} if batch_size else {}),
    }
    return add_features(rng, event, endpoint) if features else event


def make_events(
    count: int,
    *,
    callback_url: str,
    model: str = "gpt-4",
    batch_id: str | None = None,
    max_iterations: int = 10,
    seed: int | None = None,
    features: bool = False,
    endpoint: str | None = None,
) -> list[dict]:
    """`count` events of one batch (batch_size set), reproducible with `seed`; `features`
    adds the optional fields to three events in four (`endpoint` names a configured one)."""
    rng = random.Random(seed)
    batch_id = batch_id or f"batch-{uuid.uuid4().hex[:8]}"
    return [
        make_event(
            rng,
            callback_url=callback_url,
            model=model,
            batch_id=batch_id,
            batch_size=count,
            max_iterations=max_iterations,
            index=i,
            features=features,
            endpoint=endpoint,
        )
        for i in range(count)
    ]
