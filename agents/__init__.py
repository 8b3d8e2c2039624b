"""Faust agents of simapp (installed as simapp.agents; Faust's autodiscovery imports them).

simulate (the simulation topic, CONCURRENT_CONVERSATIONS actors), progress (the progress
fold and the batch report, concurrency 1), deliver (the outbox), retention (the sweep),
wiring (the parts the agents drive, and the rebalance signals).
May import worker, tables and the runtime folders; never web, commands, embedded or lab.
"""
