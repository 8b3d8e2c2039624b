"""Faust tables of simapp; importing this package registers them on the app."""
