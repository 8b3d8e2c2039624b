"""Faust tables of simapp; importing this package registers them on the app."""

from tables import progress, simulations  # noqa: F401
