"""Faust web views: Prometheus metrics (progress views live in simapp/progress_views.py)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from simapp import metrics
from simapp.application import app


@app.page("/metrics")
async def metrics_view(web: Any, request: Any) -> Any:
    return web.bytes(metrics.exposition(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
