"""Faust agents of simapp; importing this package registers them on the app."""

from agents import checkpoints, progress, simulate  # noqa: F401
