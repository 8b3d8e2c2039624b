"""Faust agents of simapp (installed as simapp.agents; Faust's autodiscovery imports them)."""
