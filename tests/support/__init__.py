"""Helpers for the tests and the benchmarks: throwaway servers, hostile tokens, integrity checks.

Not part of the package: importable because pytest puts ``tests/`` on ``sys.path``
(``pythonpath`` in pyproject.toml). What the demo also needs (a throwaway PostgreSQL, a
signing key, a resolver process, ``free_port``, ``wait_until``) lives in ``jwtkeymap.demo``.
"""
