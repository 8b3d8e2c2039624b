"""What a worker tells about itself: metrics, structured logs and batch progress.

metrics (Prometheus, the seed's names), logs (text or JSON lines, one outcome line per
simulation), progress (progress messages and the pure fold into a batch's row), follow (the
client side of the progress views: polling, terminal bar, report). May import config only.
"""
