"""Reconcile a desired mapping into the database: ownership, conflicts, no-op detection.

``desired`` says what a declarative source wants and what reconciling did,
``plan`` decides what to write from the rows it finds (a pure function), and
``writer`` reads those rows and applies the plan in one transaction. The kopf
operator and the offline ``jwtkeymap apply`` are two callers of the writer.
"""
