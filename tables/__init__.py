"""Faust tables of simapp (installed as simapp.tables; Faust's autodiscovery imports them)."""
