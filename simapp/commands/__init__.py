"""The Faust CLI commands: `faust -A simapp loadtest|submit|progress|dlq|report`.

base (how a command runs and its shared options), loadtest, submit, progress, dlq, report
(a batch's report, and its summaries exported), and estimate (the expected calls, time and
cost of a batch). Found by Faust's autodiscovery. May import every runtime folder, worker and
embedded; never agents, tables, web or lab.
"""
