"""The Kubernetes edge: a kopf operator for JWTKeyMapping resources, and offline apply/diff.

Everything that decides what the database should hold lives in
``jwtkeymap.core.reconcile``; this package only translates between Kubernetes
objects (or manifests on disk) and that core. It imports nothing, so one of its
modules can be imported alone (without kopf) and no module imports it back.
"""
