"""kopf handlers: JWTKeyMapping resources reconciled into PostgreSQL through ``core.reconcile``.

One module per job: ``runtime`` (what the handlers share, opened at startup),
``verdicts`` (a reconcile attempt and the status it writes), ``mapping`` (the
resource's create/update/resume and deletion), ``registry`` (the resources the
handlers have seen, by Secret and by identity), ``resync`` (one bulk read for the
resumes, one drift loop for all resources), ``secrets`` (a changed Secret wakes its
mappings), ``indexes`` (kopf's indexes of policies and namespaces) and ``wiring``
(one function that registers them all on a kopf registry).
"""
