"""Kafka clients, and the places where Faust's own consumer needed fixing.

committer (a commit never passes an unfinished offset), witness (what the consumer's fetch
answers say about offsets that are not records), recovery (table recovery that fails loudly,
end offsets from a Fetch), admin (topics created with the declared partitions),
producer (events to the simulation topic), reader (a topic read from its start).
May import config and observe.
"""
