"""What a worker tells about itself: metrics, structured logs, batch progress and reports.

metrics (Prometheus, the seed's names), logs (text or JSON lines, one outcome line per
simulation), progress (progress messages and the pure fold into a batch's row), report (the
batch report: a simulation's facts, the bounded fold, the view, its text), export (a batch's
summaries as JSON, JSON lines or CSV, streaming), follow (the client side of the progress
views: polling, terminal bar, report). May import config only.
"""
