"""When a call may go: rate budgets, the circuit breaker, retries and Retry-After.

budgets (requests/s and tokens/min per backend, model ceilings, the send gate), group (each
worker's whole units of a group's limit, by the assignment), breaker (pybreaker's state machine
driven from async code), retry (backoff with jitter and the provider's advice). Why a call
waited is answered here. May import config only.
"""
