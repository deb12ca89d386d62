"""The database layer: every SQL statement jwtkeymap runs, and nothing else runs SQL.

``schema`` creates and inspects the tables and the NOTIFY triggers, ``errors``
turns asyncpg's exceptions into ``core.errors``, ``rows`` holds the row shapes
and the clauses shared by statements, ``keys`` and ``mappings`` write,
``lookup`` answers the hot path, and ``store`` owns the pool.
"""
