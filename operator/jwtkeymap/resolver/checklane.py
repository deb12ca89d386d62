"""Check mode's fast lane: ``/check`` answered below aiohttp's web server.

Envoy's ext_authz and nginx's ``auth_request`` ask the check once per request of the
gateway behind them, on kept-alive connections, with the same ``Authorization`` header
time after time. A check the lane takes (``resolver/lane.py``: HTTP/1.1 keep-alive, a
plain path under ``/check``, one ``Authorization``, not a ``HEAD``) is decided by the
same ``Service`` calls as the application's check handler, and answered in one write:
the answer's prepared head (``Answer.head_lines``, made once per answer and kept with it
while it is remembered), the second's ``Date`` and the body. A check whose answer is
remembered costs the read, a dictionary lookup and that write. Everything else
(``/healthz``, ``/metrics``, a head over the field limit, two ``Authorization`` headers,
HTTP/1.0 ...) goes to the application, which answers exactly as before.
"""

from __future__ import annotations

from typing import Final

from aiohttp.http_parser import RawRequestMessage

from jwtkeymap.resolver.check import Answer
from jwtkeymap.resolver.lane import LaneConnection, answer_bytes

# The methods of the checks the lane takes (Envoy asks with the client's own); a HEAD,
# whose answer aiohttp frames its own way, is the application's.
CHECK_METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class CheckLane(LaneConnection):
    """One connection of the check's listener (Envoy's or nginx's, kept alive)."""

    __slots__ = ()

    def _start(
        self,
        message: RawRequestMessage,
        body: bytes,
        authorization: str | None,
        digest: bytes | None,
    ) -> None:
        result = self.lane.service.recall(digest)
        if result is None:
            self._task = self._loop.create_task(self._decide(authorization, digest))
            return
        self._answer(result)

    async def _decide(self, authorization: str | None, digest: bytes | None) -> None:
        # Service.decide never raises: a failure is its 500 answer.
        result = await self.lane.service.decide(authorization, digest)
        self._task = None
        self._answer(result)

    def _answer(self, result: Answer) -> None:
        self._write(answer_bytes(result))  # (never after a HEAD: the lane leaves those)
        self._finish()
