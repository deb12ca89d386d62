"""The resolver as a child process (``python -m jwtkeymap resolver``), and one ``/check`` call.

The demo sends its sample requests through one; the fault tests run several, because each
holds its own pool, cache and LISTEN connection, exactly as one sidecar per pod does.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from jwtkeymap.demo.ports import free_port
from jwtkeymap.demo.process import ChildProcess


class ResolverProcess(ChildProcess):
    """``python -m jwtkeymap resolver`` as a child process, configured from a dict."""

    name = "resolver"

    def __init__(self, settings: dict[str, Any], *, upstream: str | None = None) -> None:
        super().__init__()
        self.port = free_port()
        self.settings = {"log_level": "info", **settings}
        self.upstream = upstream

    @property
    def url(self) -> str:
        """Base URL of the resolver."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self, *, timeout: float = 30) -> None:
        """Write the config, spawn, and wait until the port answers (ready or not)."""
        config = self.dir / "config.yaml"
        config.write_text(json.dumps(self.settings))  # JSON is YAML
        argv = [sys.executable, "-m", "jwtkeymap", "--config", str(config), "resolver",
                "--listen", f"127.0.0.1:{self.port}"]  # fmt: skip
        if self.upstream:
            argv += ["--upstream", self.upstream]
        self._spawn(argv)
        await self._wait_port(self.port, timeout=timeout)

    async def readiness(self, session: Any) -> dict[str, Any]:
        """The /readyz body, with the HTTP ``status`` added."""
        async with session.get(f"{self.url}/readyz") as resp:
            body = await resp.json()
            return {"status": resp.status, **body}


@dataclasses.dataclass(frozen=True)
class Checked:
    """One /check answer: status, lower-cased headers, and the denial reason if any."""

    status: int
    headers: dict[str, str]
    reason: str | None

    @property
    def key_hash(self) -> str | None:
        """The key hash the resolver hands its proxy (allowed answers only)."""
        return self.headers.get("x-jwtkeymap-key-hash")


async def check_token(
    session: Any, url: str, token: str | None, *, headers: dict[str, str] | None = None
) -> Checked:
    """GET ``{url}/check`` with ``Authorization: Bearer <token>`` (none when ``token`` is None)."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with session.get(f"{url}/check", headers=sent) as resp:
        body = await resp.read()
        got = {k.lower(): v for k, v in resp.headers.items()}
        reason = None
        if resp.status != 200:
            reason = json.loads(body)["error"]["reason"]
        return Checked(resp.status, got, reason)
