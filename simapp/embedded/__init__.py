"""The embedded stack for `make run`, the tests and the lab: a Tansu broker, the mock LLM,
a callback sink and worker processes, each on a free loopback port, plus the load-test
catalogue. Starts workers as processes (never imports them). May import config, observe and
kafka.
"""
