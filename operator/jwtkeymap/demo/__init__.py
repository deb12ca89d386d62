"""``jwtkeymap demo``: the whole decision flow on a throwaway PostgreSQL, no cluster needed.

The modules here are what the demo runs on (a private PostgreSQL, a signing key, a resolver
process) and what it shows (sample requests, the example manifests shipped in ``data/``).
The tests reuse those pieces rather than keeping copies; nothing here exists only for them.
"""


def run() -> None:
    """Run the demo and print what it shows (the ``jwtkeymap demo`` command)."""
    # Imported on call, so that importing any module of this package (say, the throwaway
    # PostgreSQL) does not load asyncpg, aiohttp and the policy engine as well.
    from jwtkeymap.demo.tour import tour

    tour()
