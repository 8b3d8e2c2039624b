"""Client side of the progress views: fetch, follow with a terminal bar, report, tabulate.

Blocking (urllib) on purpose: used by the CLI commands and tests from outside any worker, and
run in a thread when an event loop is busy producing. Any worker's web port will do — a worker
forwards `/progress/{batch}/` to the owner of the batch — and several URLs can be given, so
following survives the worker it talks to being restarted. 503 (rebalancing/recovering) and
404 (no message of the batch processed yet) are normal while a batch starts: keep polling.
Workers with WEB_AUTH_TOKEN answer 401 unless a request carries the token (`token=`).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import IO, Any

from pydantic import SecretStr

HTTP_TIMEOUT = 15.0  # a worker's loop can stall for seconds on its first event (lazy imports)


def auth_headers(token: SecretStr | str | None) -> dict[str, str]:
    """The header a worker with WEB_AUTH_TOKEN asks for; none without a token."""
    value = token.get_secret_value() if isinstance(token, SecretStr) else token
    return {"Authorization": f"Bearer {value}"} if value else {}


def get_json(
    url: str, timeout: float = HTTP_TIMEOUT, token: SecretStr | str | None = None
) -> tuple[int, Any]:
    """(status, decoded body); status 0 when the server could not be reached."""
    req = urllib.request.Request(url, headers=auth_headers(token))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - our own workers
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"null")
        except ValueError:
            body = None
        return exc.code, body
    except (OSError, ValueError) as exc:
        return 0, {"error": f"{type(exc).__name__}: {exc}"}


def split_urls(web_url: str | Sequence[str]) -> list[str]:
    urls = web_url.split(",") if isinstance(web_url, str) else list(web_url)
    return [u.strip().rstrip("/") for u in urls if u.strip()]


def fetch_batch(
    web_url: str | Sequence[str], batch_id: str, *, token: SecretStr | str | None = None
) -> tuple[int, Any]:
    """The batch's view from the first worker that answers 200 or 404; else the last error."""
    last: tuple[int, Any] = (0, {"error": "no web URL"})
    for base in split_urls(web_url):
        status, body = get_json(f"{base}/progress/{batch_id}/", token=token)
        if status in (200, 404):
            return status, body
        last = (status, body)
    return last


def fetch_all(
    web_url: str | Sequence[str], *, token: SecretStr | str | None = None
) -> tuple[int, Any]:
    last: tuple[int, Any] = (0, {"error": "no web URL"})
    for base in split_urls(web_url):
        status, body = get_json(f"{base}/progress/", token=token)
        if status == 200:
            return status, body
        last = (status, body)
    return last


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"


def bar(done: int, total: int, width: int = 30) -> str:
    filled = min(width, int(width * done / total)) if total else 0
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def progress_line(v: dict[str, Any]) -> str:
    total = int(v.get("total") or 0)
    finished = int(v.get("completed") or 0) + int(v.get("failed") or 0)
    eta = "done" if v.get("done") else fmt_seconds(v.get("eta_seconds"))
    return (
        f"{bar(finished, total)} {v.get('completed', 0)}/{total} completed"
        f"  failed {v.get('failed', 0)}  in flight {v.get('in_flight', 0)}"
        f"  {float(v.get('rate') or 0):.1f}/s  ETA {eta}"
    )


def follow(
    web_url: str | Sequence[str],
    batch_id: str,
    *,
    timeout: float = 3600.0,
    interval: float = 1.0,
    out: IO[str] | None = None,
    should_stop: Callable[[], str | None] | None = None,
    on_view: Callable[[dict[str, Any]], None] | None = None,
    token: SecretStr | str | None = None,
) -> dict[str, Any] | None:
    """Poll until the batch is done (or timeout / should_stop gives a reason); last view."""
    out = out or sys.stdout
    tty = out.isatty()
    deadline = time.monotonic() + timeout
    last_view: dict[str, Any] | None = None
    last_print = 0.0
    while True:
        status, body = fetch_batch(web_url, batch_id, token=token)
        now = time.monotonic()
        if status == 200 and isinstance(body, dict):
            last_view = body
            if on_view is not None:
                on_view(body)
            line = progress_line(body)
        elif status == 404:
            line = f"waiting for the first event of batch {batch_id} ..."
        else:
            error = body.get("error") if isinstance(body, dict) else None
            line = f"progress unavailable ({error or f'HTTP {status}'}); retrying"
        done = bool(last_view and last_view.get("done"))
        if tty:
            out.write("\r\x1b[2K" + line)
            out.flush()
        elif done or now - last_print >= 5.0:
            out.write(line + "\n")
            out.flush()
            last_print = now
        if done:
            break
        reason = should_stop() if should_stop is not None else None
        if reason:
            out.write(("\n" if tty else "") + f"stopped following: {reason}\n")
            break
        if now >= deadline:
            out.write(("\n" if tty else "") + f"timed out after {timeout:.0f} s\n")
            break
        time.sleep(interval)
    if tty:
        out.write("\n")
        out.flush()
    return last_view


def report(
    v: dict[str, Any] | None, *, sent: int | None = None, wall: float | None = None
) -> dict[str, Any]:
    """The end-of-run numbers: delivered, failed by reason, duration, throughput, p50/p95."""
    v = v or {}
    finished = int(v.get("completed") or 0) + int(v.get("failed") or 0)
    duration = wall if wall is not None else v.get("elapsed_seconds")
    return {
        "batch_id": v.get("batch_id"),
        "sent": sent,
        "total": v.get("total"),
        "delivered": v.get("completed", 0),
        "failed": v.get("failed", 0),
        "failed_by_reason": v.get("failed_by_reason", {}),
        "end_reasons": v.get("end_reasons", {}),
        "done": bool(v.get("done")),
        "duration_seconds": round(duration, 2) if duration else None,
        "throughput_per_second": round(finished / duration, 2) if duration else None,
        "p50_seconds": v.get("duration_p50_s"),
        "p95_seconds": v.get("duration_p95_s"),
    }


def print_report(r: dict[str, Any], out: IO[str] | None = None) -> None:
    out = out or sys.stdout
    failed = ", ".join(f"{k}={n}" for k, n in sorted(r["failed_by_reason"].items())) or "none"
    reasons = ", ".join(f"{k}={n}" for k, n in sorted(r["end_reasons"].items())) or "none"
    rows = [
        ("batch", r["batch_id"]),
        ("sent", r["sent"] if r["sent"] is not None else "-"),
        ("delivered", f"{r['delivered']} / {r['total']}"),
        ("failed", f"{r['failed']} ({failed})"),
        ("end reasons", reasons),
        ("duration", f"{r['duration_seconds']} s" if r["duration_seconds"] else "-"),
        (
            "throughput",
            f"{r['throughput_per_second']} simulations/s"
            if r["throughput_per_second"] is not None
            else "-",
        ),
        ("simulation p50 / p95", f"{r['p50_seconds']} s / {r['p95_seconds']} s"),
    ]
    print_rows(rows, out=out)


def print_rows(
    rows: Sequence[tuple[str, Any]], title: str | None = None, out: IO[str] | None = None
) -> None:
    """A report as aligned `name: value` lines between rules."""
    out = out or sys.stdout
    width = max(len(name) for name, _ in rows)
    out.write("=" * 60 + "\n" + (f"{title}\n" + "=" * 60 + "\n" if title else ""))
    for name, value in rows:
        out.write(f"{name:>{width}}: {value}\n")
    out.write("=" * 60 + "\n")
    out.flush()


def table(views: list[dict[str, Any]]) -> str:
    """Plain-text table of batch views for `faust -A simapp progress`."""
    header = (
        "batch",
        "completed",
        "total",
        "failed",
        "in flight",
        "rate/s",
        "ETA",
        "p50 s",
        "p95 s",
        "state",
    )
    rows = [header]
    for v in views:
        rows.append(
            (
                str(v.get("batch_id")),
                str(v.get("completed", 0)),
                f"{v.get('total', 0)}{'' if v.get('total_known') else '?'}",
                str(v.get("failed", 0)),
                str(v.get("in_flight", 0)),
                f"{float(v.get('rate') or 0):.2f}",
                "done" if v.get("done") else fmt_seconds(v.get("eta_seconds")),
                "-" if v.get("duration_p50_s") is None else str(v["duration_p50_s"]),
                "-" if v.get("duration_p95_s") is None else str(v["duration_p95_s"]),
                "done" if v.get("done") else "running",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
