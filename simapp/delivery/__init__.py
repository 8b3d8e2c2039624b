"""Where outcomes go: summaries POSTed to their callbacks, and dead letters.

callbacks (retries, Idempotency-Key, every hop checked), urlpolicy (which URLs an event may
name), dead_letters (the record format, the writer, list and replay).
May import config, observe, limits, outbound and kafka.
"""
