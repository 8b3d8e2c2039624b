"""Measuring tools, not part of a worker: `make bench`, `make bench-kafka`, `make chaos`.

bench (throughput, budget fidelity, CPU per call), bench_kafka (CPU per Kafka operation),
chaos (losses under faults), results_doc (a run's JSON and its row in docs/). May import
anything but agents, tables, web and commands; nothing imports lab.
"""
