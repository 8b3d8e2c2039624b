"""Faust tables of simapp (installed as simapp.tables; Faust's autodiscovery imports them).

simulations (where each simulation stands, by id), progress (one row per batch), reports
(one batch report row per batch).
May import config, observe (the progress fold) and worker (the app) only.
"""
