"""A built-in catalogue of varied personas, intents and iteration counts for load tests."""

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


def make_event(
    rng: random.Random,
    *,
    callback_url: str,
    model: str,
    batch_id: str,
    batch_size: int | None,
    max_iterations: int,
    index: int,
) -> dict:
    name, description, traits = rng.choice(PERSONAS)
    return {
        "id": f"{batch_id}-{index:06d}-{uuid.UUID(int=rng.getrandbits(128)).hex[:8]}",
        "persona": {"name": name, "description": description, "traits": list(traits)},
        "intent": rng.choice(INTENTS),
        "max_iterations": rng.randint(2, max(2, max_iterations)),
        "callback_url": callback_url,
        "model": model,
        "batch_id": batch_id,
        **({"batch_size": batch_size} if batch_size else {}),
    }


def make_events(
    count: int,
    *,
    callback_url: str,
    model: str = "gpt-4",
    batch_id: str | None = None,
    max_iterations: int = 10,
    seed: int | None = None,
) -> list[dict]:
    """`count` events of one batch (batch_size set), reproducible with `seed`."""
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
        )
        for i in range(count)
    ]
