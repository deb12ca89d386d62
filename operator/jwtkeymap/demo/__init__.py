"""``jwtkeymap demo``: the whole decision flow on a throwaway PostgreSQL, no cluster needed.

The modules here are what the demo runs on (a private PostgreSQL, a signing key, a resolver
process) and what it shows (sample requests, the example manifests shipped in ``data/``).
The tests reuse those pieces rather than keeping copies; nothing here exists only for them.
"""
