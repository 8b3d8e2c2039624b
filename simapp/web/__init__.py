"""The web port of every worker: /metrics, the progress views and the progress page.

views (Faust web views), static/ (the page, no external requests). Found by Faust's
autodiscovery. May import config, observe, worker and tables.
"""
