"""Part 3 of the demo: signed JWTs sent through a real resolver process's ``/check``.

After the sample requests, one mapping is revoked in plain SQL: the table trigger's NOTIFY
evicts the resolver's cached answer at once, which the last row shows (with how long it took).
"""

from __future__ import annotations

import time

import aiohttp
import asyncpg

from jwtkeymap.demo.polling import wait_until
from jwtkeymap.demo.resolver import ResolverProcess, check_token
from jwtkeymap.demo.scenarios import PARTNER
from jwtkeymap.demo.signing import SigningKey

# The issuer the example manifests scope carol's mapping to.
EXAMPLE_ISSUER = "https://idp.example.com"


async def through_the_resolver(url: str) -> list[tuple[str, str, str]]:
    """Start a real resolver process and send signed JWTs through ``/check``."""
    idp, partner = SigningKey(EXAMPLE_ISSUER, kid="idp-1"), SigningKey(PARTNER, kid="p-1")
    resolver = ResolverProcess(
        {
            "database_url": url,
            "claim_field": "email",
            "unregistered_client_behavior": "reject",
            "log_level": "warning",
            "issuers": [
                {"issuer": k.issuer, "public_keys": [k.public_pem], "audience": "litellm"}
                for k in (idp, partner)
            ],
        }
    )
    requests = [
        ("alice@alpha (any issuer)", idp.sign({"email": "alice@alpha.example.com"})),
        ("alice@alpha via partner IdP", partner.sign({"email": "alice@alpha.example.com"})),
        ("bob@alpha (inactive)", idp.sign({"email": "bob@alpha.example.com"})),
        ("carol@beta via corporate IdP", idp.sign({"email": "carol@beta.example.com"})),
        ("carol@beta via partner IdP", partner.sign({"email": "carol@beta.example.com"})),
        ("eve (no mapping)", idp.sign({"email": "eve@example.com"})),
        ("no Authorization header", None),
        ("forged signature", SigningKey(EXAMPLE_ISSUER).sign({"email": "alice@alpha.example.com"})),
    ]
    out: list[tuple[str, str, str]] = []
    await resolver.start()
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                return bool((await resolver.readiness(http))["status"] == 200)

            await wait_until(ready, timeout=30, what="resolver readiness")
            for label, token in requests:
                got = await check_token(http, resolver.url, token)
                detail = got.headers.get("x-jwtkeymap-decision") or got.reason or ""
                team = got.headers.get("x-jwtkeymap-team-id", "")
                out.append((label, f"{got.status} {detail}", team))
            # Revoke alice behind everyone's back, in plain SQL: the trigger's NOTIFY evicts
            # the resolver's cached allow at once (no TTL wait).
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(
                    'UPDATE "LiteLLM_JWTKeyMapping" SET is_active = false '
                    "WHERE jwt_claim_value = 'alice@alpha.example.com'"
                )
            finally:
                await conn.close()
            alice = requests[0][1]
            start = time.monotonic()

            async def revoked() -> bool:
                return (await check_token(http, resolver.url, alice)).status == 403

            await wait_until(revoked, timeout=10, what="revocation")
            ms = (time.monotonic() - start) * 1000
            out.append(
                (f"alice after an SQL UPDATE (seen in {ms:.0f} ms)", "403 mapping_inactive", "")
            )
    finally:
        resolver.stop()
    return out
