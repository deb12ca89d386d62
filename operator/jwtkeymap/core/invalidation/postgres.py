"""The PostgreSQL channel: LISTEN on a dedicated connection, outside the lookup pool."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import asyncpg

from jwtkeymap.core.invalidation.channel import Backoff, Channel

LISTEN_APPLICATION_NAME: Final = "jwtkeymap-listen"


class PostgresChannel(Channel):
    """Receives the triggers' NOTIFY payloads; pings to detect a half-open connection."""

    name = "postgres"

    async def session(self, backoff: Backoff) -> None:
        """LISTEN until the connection is lost."""
        conn: asyncpg.Connection = await asyncpg.connect(
            self._url,
            timeout=self._timeout,
            server_settings={"application_name": LISTEN_APPLICATION_NAME},
        )
        try:
            lost = asyncio.Event()
            # Fires when the server ends the connection (pg_terminate_backend, restart).
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(self._channel, self._on_notify)
            self.connected_now(backoff)
            # A half-open TCP connection never fires the listener: ping it.
            interval = self._liveness
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), interval)
                if not lost.is_set():
                    await conn.fetchval("SELECT 1", timeout=min(interval, self._timeout))
            raise ConnectionError("the LISTEN connection was closed by the server")
        finally:
            conn.terminate()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.callbacks.on_payload(self, payload)
