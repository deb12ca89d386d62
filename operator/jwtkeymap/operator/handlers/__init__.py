"""kopf handlers: JWTKeyMapping resources reconciled into PostgreSQL through ``core.reconcile``.

One module per job: ``runtime`` (what the handlers share, opened at startup),
``verdicts`` (a reconcile attempt and the status it writes), ``mapping`` (the
resource's create/update/resume, drift timer and deletion), ``secrets`` (a
changed Secret wakes its mappings), ``indexes`` (kopf's in-memory indexes) and
``wiring`` (one function that registers them all on a kopf registry).
"""
