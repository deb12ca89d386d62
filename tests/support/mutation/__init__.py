"""Mutation testing of ``jwtkeymap.core``: AST mutants, the tests that must kill them, a report.

``make mutate`` runs ``python -m support.mutation.runner``; docs/mutation.md explains why a
small mutator of our own instead of mutmut or cosmic-ray, and lists the score per module.
"""
