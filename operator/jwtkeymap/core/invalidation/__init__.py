"""Invalidation: keeps every process's mapping cache coherent with the database.

``messages`` is the wire format, ``postgres`` and ``redis`` are the two
channels that carry it, ``relay`` copies PostgreSQL's notifications to Redis,
and ``coherence`` decides from the channels' state whether the cache may be
trusted.
"""
