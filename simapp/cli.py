"""Faust commands of simapp (loadtest, submit, progress, dlq)."""
