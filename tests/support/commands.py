"""Run the ``jwtkeymap`` command as a user does: a process of its own, a clean environment."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys


async def run_jwtkeymap(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m jwtkeymap ARGS`` without the caller's JWTKEYMAP_* settings (plus ``env``).

    A process of its own also gives the resolver and the operator the main thread
    their signal handlers need.
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("JWTKEYMAP_")}
    full_env.update(env or {})
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jwtkeymap", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )
