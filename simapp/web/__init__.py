"""The web port of every worker: /metrics, the progress and report views, and the page.

views (Faust web views), static/ (the page and its report.js, no external requests). Found
by Faust's autodiscovery. May import config, observe, worker and tables.
"""
