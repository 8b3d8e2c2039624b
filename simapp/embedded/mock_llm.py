"""Mock OpenAI-compatible chat-completions server for load and fault testing.

Lets the simulator be exercised end to end (rate limits, 429 storms, 5xx,
hangs, auth failures, unknown models) without a real LLM, while producing
replies that are persona-aware and deterministic so tests are repeatable.

Run: ``python -m simapp.embedded.mock_llm --host 127.0.0.1 --port 0``; it
prints ``MOCK_LLM_READY port=<port>`` once it is listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import random
import re
import sys
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from simapp.embedded.httpserver import run_until_signal, serve_app

READY_PREFIX = "MOCK_LLM_READY"
MAX_DETAIL_TIMES = 20000
MAX_RECENT_REQUESTS = 5000
HANG_MAX_S = 3600.0
HANG_POLL_S = 0.1

STOP_MARKER_RE = re.compile(r"Stop marker: (\S+)")
PERSONA_RE = re.compile(r"^\s*Persona:\s*(.+?)\s*$", re.MULTILINE)
WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")


@dataclass
class MockConfig:
    """Server behaviour; every field except host/port is changeable at runtime."""

    host: str = "127.0.0.1"
    port: int = 0
    latency_ms: float = 50.0
    latency_jitter_ms: float = 0.0
    # uniform: latency ± jitter; lognormal: mean latency, standard deviation jitter (a tail)
    latency_distribution: str = "uniform"
    rps_limit: float = 0.0
    retry_after_s: float = 1.0
    force_429_count: int = 0
    error_rate: float = 0.0
    fail_next: int = 0
    hang_rate: float = 0.0
    api_key: str | None = None
    unknown_models: list[str] = field(default_factory=lambda: ["mock-unknown"])
    context_window_tokens: int = 0  # prompts longer than this get OpenAI's 400; 0 = no limit
    empty_user_replies: int = 0  # the next N simulated-user replies are empty
    verbose_reply_chars: int = 0  # assistant replies are this many CJK characters (a verbose model)
    reply_tag: str = ""  # appended to every assistant reply (tells one chatbot version's replies)
    # the judge fails a criterion containing "(strict)" with this probability when the
    # transcript contains judge_strict_tag (decided per transcript and criterion: reproducible)
    judge_strict_tag: str = ""
    judge_strict_fail_rate: float = 0.0
    judge_flip_rate: float = 0.0  # each verdict of the judge flips with this probability
    seed: int | None = None


_STATIC_FIELDS = {"host", "port"}
_FLOAT_FIELDS = {
    "judge_strict_fail_rate",
    "judge_flip_rate",
    "latency_ms",
    "latency_jitter_ms",
    "rps_limit",
    "retry_after_s",
    "error_rate",
    "hang_rate",
}
_INT_FIELDS = {
    "force_429_count",
    "fail_next",
    "context_window_tokens",
    "empty_user_replies",
    "verbose_reply_chars",
}
LATENCY_DISTRIBUTIONS = ("uniform", "lognormal")
Z_99 = 2.3263  # the standard normal's 99th percentile
JUDGE_GARBAGE_MODEL = "mock-judge-garbage"  # a judge model whose verdicts are not JSON


def _coerce_field(name: str, value: Any) -> Any:
    """Validate one runtime config value so a bad admin call fails loudly, not later."""
    if name in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number")
        if value < 0:
            raise ValueError(f"{name} must be >= 0")
        if name in ("error_rate", "hang_rate", "judge_strict_fail_rate", "judge_flip_rate") and (
            value > 1
        ):
            raise ValueError(f"{name} must be within 0..1")
        return float(value)
    if name in _INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer")
        return value
    if name == "api_key":
        if value is not None and not isinstance(value, str):
            raise ValueError("api_key must be a string or null")
        return value or None
    if name == "unknown_models":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("unknown_models must be a list of strings")
        return list(value)
    if name in ("reply_tag", "judge_strict_tag"):
        if not isinstance(value, str) or len(value) > 100:
            raise ValueError(f"{name} must be a string of at most 100 characters")
        return value
    if name == "latency_distribution":
        if value not in LATENCY_DISTRIBUTIONS:
            raise ValueError(f"latency_distribution must be one of {LATENCY_DISTRIBUTIONS}")
        return value
    if name == "seed":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError("seed must be an integer or null")
        return value
    raise ValueError(f"unknown or read-only config field: {name}")


def _format_retry_after(seconds: float) -> str:
    """Render ``1`` rather than ``1.0`` so integer-only clients still parse it."""
    return f"{seconds:g}"


def _openai_error(message: str, err_type: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": None, "code": code}}


def _content_text(content: Any) -> str:
    """Flatten OpenAI content (string or list of parts) to plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return " ".join(parts)
    return "" if content is None else str(content)


def _crc(text: str) -> int:
    """Stable hash (unlike hash()) so replies are identical across processes."""
    return zlib.crc32(text.encode("utf-8"))


def _word_count(text: str) -> int:
    return len(text.split())


# --------------------------------------------------------------------------- replies

_USER_CLOSINGS = (
    "Thanks, that answers everything I needed, {persona} is all set.",
    "Great, that's clear now. {persona} appreciates the help, goodbye.",
    "Perfect, I think {persona} can take it from here. Thanks!",
    "Okay, that works for me. That's all from {persona} for today.",
)
_USER_FOLLOWUPS = (
    'Hmm, as {persona} I\'m still unsure about the "{word}" part. Could you explain it a bit more?',
    '{persona} here again: what exactly happens with "{word}" if something goes wrong?',
    'Thanks. Speaking as {persona}, is there a simpler way to handle "{word}"?',
    'Got it, but {persona} wonders how long "{word}" usually takes. Can you say?',
)
_ASSISTANT_REPLIES = (
    'You asked: "{snippet}". The short answer is that it depends on your setup, '
    "but the standard approach works in most cases. Let me know if you want step-by-step details.",
    'Regarding "{snippet}": I\'d start with the basics and check your current settings first. '
    "If that doesn't help, I can walk you through the next steps.",
    'Good question about "{snippet}". Here is a clear summary: follow the documented process '
    "and confirm the result afterwards.",
    'Thanks for asking about "{snippet}". This is usually straightforward to resolve.',
)


def _pick_word(text: str) -> str:
    """Pick a salient word from the last message so follow-ups look on-topic."""
    words = WORD_RE.findall(text)
    if not words:
        return "that"
    longest = max(len(w) for w in words)
    return next(w for w in words if len(w) == longest)


JUDGE_RE = re.compile(r"impartial judge", re.IGNORECASE)
CRITERION_RE = re.compile(r"^\s*(\d+)\.\s+(.+?)\s*$", re.MULTILINE)


def judge_reply(messages: list[dict[str, Any]]) -> str:
    """A judge's JSON verdicts: every criterion passes unless it says "(fail)"."""
    text = "\n".join(_content_text(m.get("content")) for m in messages if m.get("role") == "user")
    section = text.split("Criteria:", 1)[-1].split("Transcript:", 1)[0]
    verdicts = [
        {
            "criterion": criterion,
            "passed": "(fail)" not in criterion.lower(),
            "reasoning": f"Checked against the transcript ({len(text.split())} words).",
        }
        for _, criterion in CRITERION_RE.findall(section)
    ]
    return json.dumps({"criteria": verdicts})


def generate_reply(messages: list[dict[str, Any]]) -> str:
    """Deterministic reply: a judge's verdicts if the system prompt asks for a judge, the
    simulated user if it has a stop marker, else the assistant."""
    system_text = "\n".join(
        _content_text(m.get("content")) for m in messages if m.get("role") == "system"
    )
    if JUDGE_RE.search(system_text):
        return judge_reply(messages)
    convo = [m for m in messages if m.get("role") != "system"]
    last_text = _content_text(convo[-1].get("content")) if convo else ""
    marker = STOP_MARKER_RE.search(system_text)
    if marker:
        token = marker.group(1)
        pm = PERSONA_RE.search(system_text)
        persona = pm.group(1) if pm else "the user"
        first_text = _content_text(convo[0].get("content")) if convo else ""
        k = 1 + _crc(first_text) % 4
        own_replies = sum(1 for m in convo if m.get("role") == "assistant")
        variant = _crc(f"{first_text}|{own_replies}")
        if own_replies + 1 >= k:
            closing = _USER_CLOSINGS[variant % len(_USER_CLOSINGS)].format(persona=persona)
            return f"{closing} {token}"
        template = _USER_FOLLOWUPS[variant % len(_USER_FOLLOWUPS)]
        return template.format(persona=persona, word=_pick_word(last_text))
    last_user = next(
        (_content_text(m.get("content")) for m in reversed(convo) if m.get("role") == "user"),
        last_text,
    )
    words = last_user.split()
    snippet = " ".join(words[:6]) + (" ..." if len(words) > 6 else "")
    if not snippet:
        snippet = "your question"
    template = _ASSISTANT_REPLIES[_crc(last_user) % len(_ASSISTANT_REPLIES)]
    return template.format(snippet=snippet)


# --------------------------------------------------------------------------- state


class SlidingWindow:
    """Exact count of events in the trailing 1 s window, plus its historical max."""

    def __init__(self, width_s: float = 1.0) -> None:
        self.width_s = width_s
        self.times: deque[float] = deque()
        self.max_count = 0

    def prune(self, now: float) -> int:
        cutoff = now - self.width_s
        while self.times and self.times[0] <= cutoff:
            self.times.popleft()
        return len(self.times)

    def add(self, now: float) -> None:
        self.prune(now)
        self.times.append(now)
        self.max_count = max(self.max_count, len(self.times))


class MockState:
    """Mutable config plus counters; one instance per app, touched only on the loop."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.stopping = asyncio.Event()
        self.error_toggle = 0
        self.completion_seq = 0
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.responses_by_status: dict[str, int] = {}
        self.arrivals = SlidingWindow()
        self.admitted = SlidingWindow()
        self.rate_limited = 0
        self.hung = 0
        self.by_model: dict[str, int] = {}
        self.first_request_at: float | None = None
        self.last_request_at: float | None = None
        self.first_mono: float | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self.client_headers = 0  # requests that carried one of our own X-Simapp-* headers
        self.hung_for: list[float] = []  # seconds each hung request waited for its client
        self.recent: deque[dict[str, Any]] = deque(maxlen=MAX_RECENT_REQUESTS)
        self.admitted_times: deque[float] = deque(maxlen=MAX_DETAIL_TIMES)
        self.admitted_times_by_model: dict[str, deque[float]] = {}
        self.rate_limited_times: deque[float] = deque(maxlen=MAX_DETAIL_TIMES)
        self.latencies_ms: deque[float] = deque(maxlen=MAX_DETAIL_TIMES)  # drawn, newest last

    def rel(self, mono: float) -> float:
        return round(mono - (self.first_mono if self.first_mono is not None else mono), 6)

    def snapshot(self, detail: bool) -> dict[str, Any]:
        self.in_flight = max(self.in_flight, 0)
        out: dict[str, Any] = {
            "requests": self.requests,
            "responses_by_status": dict(self.responses_by_status),
            "max_1s_window": self.arrivals.max_count,
            "max_1s_window_admitted": self.admitted.max_count,
            "rate_limited": self.rate_limited,
            "hung": self.hung,
            "by_model": dict(self.by_model),
            "client_headers": self.client_headers,
            "first_request_at": self.first_request_at,
            "last_request_at": self.last_request_at,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "latency_ms": _quantiles(self.latencies_ms),
            "config": dataclasses.asdict(self.config),
            "configured_latency_p99_ms": round(latency_p99_ms(self.config), 1),
        }
        if detail:
            out["admitted_times"] = list(self.admitted_times)
            out["admitted_times_by_model"] = {
                m: list(ts) for m, ts in self.admitted_times_by_model.items()
            }
            out["rate_limited_times"] = list(self.rate_limited_times)
            out["hung_for"] = list(self.hung_for)
        return out


STATE_KEY = web.AppKey("mock_llm_state", MockState)


# --------------------------------------------------------------------------- handlers


def _json_response(
    state: MockState, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    """Build a JSON response and count it, so stats always match what clients saw."""
    key = str(status)
    state.responses_by_status[key] = state.responses_by_status.get(key, 0) + 1
    return web.json_response(body, status=status, headers=headers)


def _rate_limited(state: MockState, now: float) -> web.Response:
    state.rate_limited += 1
    state.rate_limited_times.append(state.rel(now))
    return _json_response(
        state,
        429,
        _openai_error("Rate limit exceeded", "rate_limit_error", "rate_limit_exceeded"),
        headers={"Retry-After": _format_retry_after(state.config.retry_after_s)},
    )


def _system_text(messages: list[dict[str, Any]]) -> str:
    return "\n".join(
        _content_text(m.get("content"))
        for m in messages
        if isinstance(m, dict) and m.get("role") == "system"
    )


def _request_summary(payload: Any, model: str, authorization: str | None) -> dict[str, Any]:
    """What a test may ask about a request: model, sampling options, the system prompt, and
    the Authorization header it carried (which key reached this server; a test server)."""
    messages = payload.get("messages") if isinstance(payload, dict) else None
    messages = messages if isinstance(messages, list) else []
    system = next(
        (
            _content_text(m.get("content"))
            for m in messages
            if isinstance(m, dict) and m.get("role") == "system"
        ),
        "",
    )
    options = payload if isinstance(payload, dict) else {}
    return {
        "model": model,
        "temperature": options.get("temperature"),
        "max_tokens": options.get("max_tokens"),
        "system": system[:2000],
        "messages": len(messages),
        "simulated_user": bool(STOP_MARKER_RE.search(system)),
        "judge": bool(JUDGE_RE.search(system)),
        "authorization": authorization,
    }


async def _hang(request: web.Request, state: MockState) -> None:
    """Never answer; return once the client goes away (recording after how long: the
    client's timeout, to HANG_POLL_S) or the server stops."""
    started = time.monotonic()
    deadline = started + HANG_MAX_S
    while time.monotonic() < deadline and not state.stopping.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            state.hung_for.append(round(time.monotonic() - started, 3))
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(state.stopping.wait(), HANG_POLL_S)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """OpenAI chat.completions: admission control, faults, then a canned reply."""
    state = request.app[STATE_KEY]
    cfg = state.config
    raw = await request.read()
    payload: Any
    try:
        payload = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        payload = None
    model = payload.get("model") if isinstance(payload, dict) else None
    model_key = model if isinstance(model, str) and model else "<none>"

    now = time.monotonic()
    state.requests += 1
    if state.first_mono is None:
        state.first_mono = now
        state.first_request_at = time.time()
    state.last_request_at = time.time()
    state.by_model[model_key] = state.by_model.get(model_key, 0) + 1
    state.arrivals.add(now)
    if any(name.lower().startswith("x-simapp") for name in request.headers):
        state.client_headers += 1
    state.recent.append(_request_summary(payload, model_key, request.headers.get("Authorization")))

    # Admission: anything not answered 429 here counts as "admitted".
    if cfg.force_429_count > 0:
        cfg.force_429_count -= 1
        return _rate_limited(state, now)
    if cfg.rps_limit > 0 and state.admitted.prune(now) >= cfg.rps_limit:
        return _rate_limited(state, now)
    state.admitted.add(now)
    state.admitted_times.append(state.rel(now))
    state.admitted_times_by_model.setdefault(model_key, deque(maxlen=MAX_DETAIL_TIMES)).append(
        state.rel(now)
    )

    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    try:
        return await _admitted_response(request, state, payload, model)
    finally:
        state.in_flight -= 1


def _error(
    state: MockState, status: int, message: str, err_type: str, code: str | None
) -> web.Response:
    """An OpenAI-shaped error response, counted."""
    return _json_response(state, status, _openai_error(message, err_type, code))


def _decide_outcome(state: MockState) -> str:
    """The injected fault this request gets ("fail", "error", "hang"), or "ok". Decided before
    the latency, so that a config change during the latency cannot mix two configs."""
    cfg = state.config
    if cfg.fail_next > 0:
        cfg.fail_next -= 1
        return "fail"
    if cfg.error_rate > 0 and state.rng.random() < cfg.error_rate:
        return "error"
    if cfg.hang_rate > 0 and state.rng.random() < cfg.hang_rate:
        return "hang"
    return "ok"


def lognormal_params(mean_ms: float, sd_ms: float) -> tuple[float, float]:
    """(mu, sigma) of the log-normal with this mean and standard deviation."""
    sigma2 = math.log(1.0 + (sd_ms / mean_ms) ** 2)
    return math.log(mean_ms) - sigma2 / 2, math.sqrt(sigma2)


def latency_p99_ms(cfg: MockConfig) -> float:
    """The configured latency's 99th percentile (what a heavy tail looks like)."""
    if cfg.latency_distribution == "lognormal" and cfg.latency_ms > 0:
        mu, sigma = lognormal_params(cfg.latency_ms, cfg.latency_jitter_ms)
        return math.exp(mu + Z_99 * sigma)
    return cfg.latency_ms + 0.98 * cfg.latency_jitter_ms


def draw_latency_ms(cfg: MockConfig, rng: random.Random) -> float:
    """One call's latency: uniform latency ± jitter, or log-normal with that mean and sd."""
    if cfg.latency_distribution == "lognormal" and cfg.latency_ms > 0:
        mu, sigma = lognormal_params(cfg.latency_ms, cfg.latency_jitter_ms)
        return rng.lognormvariate(mu, sigma)
    return rng.uniform(
        cfg.latency_ms - cfg.latency_jitter_ms, cfg.latency_ms + cfg.latency_jitter_ms
    )


def _quantiles(values: deque[float]) -> dict[str, float] | None:
    """p50, p99 and max of the latencies drawn (the newest MAX_DETAIL_TIMES)."""
    if not values:
        return None
    ordered = sorted(values)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": round(at(0.5), 1), "p99": round(at(0.99), 1), "max": round(ordered[-1], 1)}


async def _latency(state: MockState) -> None:
    """The configured latency (`draw_latency_ms`)."""
    delay_ms = draw_latency_ms(state.config, state.rng)
    state.latencies_ms.append(delay_ms)
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000.0)


def _rejection(
    request: web.Request, state: MockState, payload: Any, model: Any
) -> web.Response | None:
    """The 401, 400 or 404 OpenAI answers before it reads the prompt, in its order; None if
    the request is well formed, authorised and for a known model."""
    cfg = state.config
    if cfg.api_key is not None:
        auth = request.headers.get("Authorization", "")
        if auth != f"Bearer {cfg.api_key}":
            return _error(
                state, 401, "Incorrect API key provided.", "authentication_error", "invalid_api_key"
            )
    invalid = "invalid_request_error"
    if not isinstance(payload, dict):
        return _error(state, 400, "Request body must be a JSON object.", invalid, None)
    messages = payload.get("messages")
    if not isinstance(model, str) or not model:
        return _error(state, 400, "You must provide a model parameter.", invalid, None)
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) for m in messages)
    ):
        return _error(state, 400, "'messages' must be a non-empty array of objects.", invalid, None)
    if model in cfg.unknown_models:
        return _error(state, 404, f"The model `{model}` does not exist", invalid, "model_not_found")
    return None


def _context_exceeded(state: MockState, prompt_tokens: int) -> web.Response | None:
    """OpenAI's 400 for a prompt longer than the configured context window, if it is."""
    window = state.config.context_window_tokens
    if not window or prompt_tokens <= window:
        return None
    return _error(
        state,
        400,
        f"This model's maximum context length is {window} tokens. "
        f"However, your messages resulted in {prompt_tokens} tokens.",
        "invalid_request_error",
        "context_length_exceeded",
    )


async def _fault(request: web.Request, state: MockState, outcome: str) -> web.Response:
    """The injected fault: a 500 ("fail"), 500 and 503 in turn ("error"), or no answer until
    the client gives up ("hang")."""
    if outcome == "fail":
        return _error(
            state, 500, "The server had an error processing your request.", "server_error", None
        )
    if outcome == "error":
        state.error_toggle ^= 1
        status = 500 if state.error_toggle else 503
        msg = (
            "The server had an error processing your request."
            if status == 500
            else ("The engine is currently overloaded, please try again later.")
        )
        return _error(state, status, msg, "server_error", None)
    state.hung += 1
    await _hang(request, state)
    # Client is gone (or we are stopping); any answer is best-effort.
    return web.Response(status=503, text="hung")


def _reply(state: MockState, model: str, messages: list[dict[str, Any]]) -> str:
    """The canned reply, unless the model is the garbage judge or an empty reply is due."""
    cfg = state.config
    reply = generate_reply(messages)
    if model == JUDGE_GARBAGE_MODEL:
        reply = "I think the conversation went fine overall."
    elif cfg.empty_user_replies and STOP_MARKER_RE.search(_system_text(messages)):
        cfg.empty_user_replies -= 1
        reply = ""
    elif cfg.verbose_reply_chars and not STOP_MARKER_RE.search(_system_text(messages)):
        reply = "字" * cfg.verbose_reply_chars  # 3 bytes in UTF-8, 6 in Faust's escaped JSON
    system = _system_text(messages)
    if JUDGE_RE.search(system):
        reply = _judge_rules(state, messages, reply)
    elif cfg.reply_tag and not STOP_MARKER_RE.search(system):
        reply = f"{reply} {cfg.reply_tag}"
    return reply


def _judge_rules(state: MockState, messages: list[dict[str, Any]], reply: str) -> str:
    """The judge's configured failures: "(strict)" criteria fail on tagged transcripts, and
    any verdict may flip (a judge that disagrees with itself)."""
    cfg = state.config
    if not (cfg.judge_strict_tag or cfg.judge_flip_rate):
        return reply
    try:
        verdicts = json.loads(reply)["criteria"]
    except (ValueError, KeyError, TypeError):
        return reply
    transcript = "\n".join(_content_text(m.get("content")) for m in messages)
    tagged = bool(cfg.judge_strict_tag) and cfg.judge_strict_tag in transcript
    for verdict in verdicts:
        criterion = str(verdict.get("criterion", ""))
        if tagged and "(strict)" in criterion:
            draw = _crc(f"{transcript}|{criterion}") % 10_000 / 10_000
            if draw < cfg.judge_strict_fail_rate:
                verdict["passed"] = False
                verdict["reasoning"] = f"The replies tagged {cfg.judge_strict_tag} miss it."
        if cfg.judge_flip_rate and state.rng.random() < cfg.judge_flip_rate:
            verdict["passed"] = not verdict["passed"]
    return json.dumps({"criteria": verdicts})


def _completion(state: MockState, model: str, reply: str, prompt_tokens: int) -> dict[str, Any]:
    """A chat.completion body with `reply` and word-count usage."""
    completion_tokens = max(1, _word_count(reply)) if reply else 0
    state.completion_seq += 1
    return {
        "id": f"chatcmpl-mock-{state.completion_seq:08d}-{_crc(reply):08x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


async def _admitted_response(
    request: web.Request, state: MockState, payload: Any, model: Any
) -> web.StreamResponse:
    """An admitted request: its fault decided, the latency, OpenAI's checks, then the fault
    or a canned reply."""
    outcome = _decide_outcome(state)
    await _latency(state)
    rejected = _rejection(request, state, payload, model)
    if rejected is not None:
        return rejected
    messages: list[dict[str, Any]] = payload["messages"]
    prompt_tokens = max(1, sum(_word_count(_content_text(m.get("content"))) for m in messages))
    rejected = _context_exceeded(state, prompt_tokens)
    if rejected is not None:
        return rejected
    if outcome != "ok":
        return await _fault(request, state, outcome)
    reply = _reply(state, model, messages)
    return _json_response(state, 200, _completion(state, model, reply, prompt_tokens))


async def stats(request: web.Request) -> web.Response:
    detail = request.query.get("detail", "") not in ("", "0", "false")
    return web.json_response(request.app[STATE_KEY].snapshot(detail))


async def admin_config(request: web.Request) -> web.Response:
    """Apply a partial config update atomically (all fields valid or nothing changes)."""
    state = request.app[STATE_KEY]
    if request.method == "POST":
        try:
            update = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        if not isinstance(update, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        try:
            coerced = {k: _coerce_field(k, v) for k, v in update.items()}
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        for k, v in coerced.items():
            setattr(state.config, k, v)
        if "seed" in coerced:
            state.rng.seed(coerced["seed"])
    return web.json_response(dataclasses.asdict(state.config))


async def recent_requests(request: web.Request) -> web.Response:
    """The last MAX_RECENT_REQUESTS requests, summarised (see _request_summary)."""
    return web.json_response({"requests": list(request.app[STATE_KEY].recent)})


async def admin_reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return web.json_response({"ok": True})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _on_shutdown(app: web.Application) -> None:
    """Release hanging handlers so shutdown doesn't wait for them."""
    app[STATE_KEY].stopping.set()


def build_app(config: MockConfig) -> web.Application:
    """Create the aiohttp app; the config object is mutated by /admin/config."""
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[STATE_KEY] = MockState(config)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/chat/completions", chat_completions)
    app.router.add_get("/stats", stats)
    app.router.add_get("/requests", recent_requests)
    app.router.add_get("/admin/config", admin_config)
    app.router.add_post("/admin/config", admin_config)
    app.router.add_post("/admin/reset", admin_reset)
    app.router.add_get("/healthz", healthz)
    app.on_shutdown.append(_on_shutdown)
    return app


async def serve(config: MockConfig) -> tuple[web.AppRunner, int]:
    """Start listening; returns the runner (call ``cleanup()``) and the bound port."""
    return await serve_app(build_app(config), config.host, config.port)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> MockConfig:
    d = MockConfig()
    p = argparse.ArgumentParser(
        prog="python -m simapp.embedded.mock_llm", description=__doc__.splitlines()[0]
    )
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port, help="0 picks a free port")
    p.add_argument("--latency-ms", type=float, default=d.latency_ms)
    p.add_argument("--latency-jitter-ms", type=float, default=d.latency_jitter_ms)
    p.add_argument(
        "--latency-distribution",
        choices=LATENCY_DISTRIBUTIONS,
        default=d.latency_distribution,
        help="uniform: latency ± jitter; lognormal: mean latency, standard deviation jitter",
    )
    p.add_argument("--rps-limit", type=float, default=d.rps_limit, help="0 = unlimited")
    p.add_argument("--retry-after-s", type=float, default=d.retry_after_s)
    p.add_argument("--force-429-count", type=int, default=d.force_429_count)
    p.add_argument("--error-rate", type=float, default=d.error_rate)
    p.add_argument("--fail-next", type=int, default=d.fail_next)
    p.add_argument("--hang-rate", type=float, default=d.hang_rate)
    p.add_argument("--api-key", default=d.api_key)
    p.add_argument(
        "--unknown-models",
        default=",".join(d.unknown_models),
        help="comma-separated model names answered with 404",
    )
    p.add_argument("--context-window-tokens", type=int, default=d.context_window_tokens)
    p.add_argument("--seed", type=int, default=d.seed)
    a = p.parse_args(argv)
    return MockConfig(
        host=a.host,
        port=a.port,
        latency_ms=a.latency_ms,
        latency_jitter_ms=a.latency_jitter_ms,
        latency_distribution=a.latency_distribution,
        rps_limit=a.rps_limit,
        retry_after_s=a.retry_after_s,
        force_429_count=a.force_429_count,
        error_rate=a.error_rate,
        fail_next=a.fail_next,
        hang_rate=a.hang_rate,
        api_key=a.api_key or None,
        unknown_models=[m.strip() for m in a.unknown_models.split(",") if m.strip()],
        context_window_tokens=a.context_window_tokens,
        seed=a.seed,
    )


def main(argv: list[str] | None = None) -> int:
    return run_until_signal(parse_args(argv), serve, READY_PREFIX)


if __name__ == "__main__":
    sys.exit(main())
