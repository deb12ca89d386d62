"""The core of jwtkeymap: claims, tokens, policy, cache, database, invalidation, reconcile.

Nothing here knows about Kubernetes or serves HTTP; the operator and the
resolver are two thin edges over this package. Package ``__init__`` files import
nothing, so any one module (a LiteLLM hook, say) can be imported alone.
"""
