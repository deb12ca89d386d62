"""LiteLLM ``custom_auth`` hook: serve a request as the virtual key a jwtkeymap assertion names.

An open-source LiteLLM proxy refuses a JWT as a key, and its own JWT-to-key
mapping needs an enterprise licence. The jwtkeymap resolver in front of it has
already verified the client's JWT and resolved it to a virtual key; it sends
that decision upstream as a signed assertion (``x-jwtkeymap-assertion``). This
hook verifies the assertion and loads the key it names with LiteLLM's own key
resolution and validation, so the key's blocked flag, expiry, models,
key/team/user budgets and rpm/tpm limits behave exactly as for a request
carrying the plain ``sk-`` key, and spend is recorded on that key.

LiteLLM configuration (each setting is needed)::

    general_settings:
      custom_auth: jwtkeymap.litellm_hook.user_api_key_auth
      custom_auth_settings: {mode: "on"}   # "auto" swallows LiteLLM's own refusals
                                           # (over budget...) into a misleading 401
      custom_auth_run_common_checks: true  # budgets, model access of the returned key
    litellm_settings:
      enable_post_custom_auth_checks: true # LiteLLM's checks after custom auth

Environment: ``JWTKEYMAP_HOOK_JWKS`` (a file holding a JWK Set or PEM public keys,
or the http(s) URL of a resolver's ``/.well-known/jwks.json``), ``JWTKEYMAP_HOOK_AUDIENCE``
(default ``litellm``), ``JWTKEYMAP_HOOK_ISSUER`` (checked when set),
``JWTKEYMAP_HOOK_JWKS_REFRESH_SECONDS`` (least time between two fetches, default 5).
Keys are loaded on first use, cached, and fetched again for an unknown ``kid`` at
that bounded rate; LiteLLM may start before the resolver, and until keys load an
assertion is refused with 401.

What each request gets:

* no assertion: LiteLLM's own auth, unchanged (the master key and plain ``sk-``
  keys keep working; a JWT is refused as before);
* a present but invalid assertion (bad signature, other audience or issuer,
  expired, unknown ``kid``, malformed): 401 naming the reason, never a fall-through;
* ``mapped`` / ``auto_registered``: the named key, through LiteLLM's own checks;
* ``fallback`` (the resolver allowed a client with no mapping): no privilege from
  the assertion; LiteLLM's own auth of the request's own key decides;
* ``admin``: only with LiteLLM's master key as the request's own key (then LiteLLM's
  own auth), else 401. The assertion never grants admin rights by itself.

It uses LiteLLM internals (``IdentityStore``, ``validate_resolved_virtual_key``):
tested with LiteLLM 1.108.7, supported ``>=1.108.7,<1.109`` (the ``litellm-hook``
extra pins that range). Importing this module checks that they exist and fails
naming the version when they do not. It loads no kopf, asyncpg or aiohttp of
jwtkeymap's own: only ``jwtkeymap.core.assertion`` and what that needs.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib
import importlib.metadata
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from jwtkeymap.core.assertion import (
    DEFAULT_AUDIENCE,
    HEADER,
    Assertion,
    VerifyingKey,
    unverified_kid,
    verify,
    verifying_keys,
)
from jwtkeymap.core.errors import ConfigError, InvalidAssertion

log = logging.getLogger("jwtkeymap.litellm_hook")

SUPPORTED_LITELLM: Final = ">=1.108.7,<1.109"
# module -> attributes this hook uses.
_NEEDS: Final = {
    "litellm.proxy._types": ("ProxyException", "ProxyErrorTypes", "UserAPIKeyAuth"),
    "litellm.proxy.auth.resolvers.store": ("IdentityStore",),
    "litellm.proxy.auth.user_api_key_auth": ("validate_resolved_virtual_key",),
    "litellm.proxy.auth.auth_utils": ("get_request_route",),
    "litellm.proxy.common_utils.http_parsing_utils": ("read_request_body",),
}


def _litellm_version() -> str:
    try:
        return importlib.metadata.version("litellm")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _check_litellm() -> dict[str, Any]:
    """Import what the hook uses; ImportError naming the versions when something is missing."""
    found: dict[str, Any] = {}
    for module_name, names in _NEEDS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing = f"{module_name} ({exc})"
            break
        absent = [n for n in names if not hasattr(module, n)]
        if absent:
            missing = f"{module_name}.{absent[0]}"
            break
        found.update({n: getattr(module, n) for n in names})
    else:
        return found
    raise ImportError(
        f"jwtkeymap.litellm_hook needs LiteLLM {SUPPORTED_LITELLM} (tested with 1.108.7); "
        f"LiteLLM {_litellm_version()} has no {missing}"
    )


_LITELLM: Final = _check_litellm()
ProxyException = _LITELLM["ProxyException"]
ProxyErrorTypes = _LITELLM["ProxyErrorTypes"]
UserAPIKeyAuth = _LITELLM["UserAPIKeyAuth"]


class KeySet:
    """The resolver's public keys: loaded on first use, refreshed on an unknown ``kid``.

    Fetches are single-flight and at least ``refresh_seconds`` apart, so a stream of
    forged ``kid`` values cannot turn into a stream of fetches.
    """

    def __init__(self, source: str, *, refresh_seconds: float = 5.0) -> None:
        self.source = source
        self.refresh_seconds = refresh_seconds
        self.keys: dict[str, VerifyingKey] = {}
        self.generation = 0  # moves whenever the keys change
        self.fetches = 0
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str) -> dict[str, VerifyingKey]:
        """The keys to verify ``kid`` with (fetched again when it is unknown and allowed)."""
        if kid not in self.keys:
            # Wait for a fetch in flight (the first one, at start, above all) rather than
            # refuse while it runs; a new fetch only when the rate bound allows it.
            async with self._lock:
                if kid not in self.keys and self._may_fetch():
                    await self._refresh()
        if not self.keys:
            raise InvalidAssertion("keys_unavailable", "the resolver's keys are not loaded yet")
        return self.keys

    def _may_fetch(self) -> bool:
        last = self._last_attempt
        return last is None or time.monotonic() - last >= self.refresh_seconds

    async def _refresh(self) -> None:
        self._last_attempt = time.monotonic()
        self.fetches += 1
        try:
            document = await self._read()
            keys = verifying_keys(document)
            if keys != self.keys:
                self.keys = keys
                self.generation += 1
        except (OSError, ConfigError, ValueError) as exc:
            # Keep the keys we have: a resolver restarting must not refuse everyone.
            log.warning("cannot load the jwtkeymap keys from %s: %s", self.source, exc)

    async def _read(self) -> bytes:
        if self.source.startswith(("http://", "https://")):
            import httpx  # LiteLLM's own HTTP client

            async with httpx.AsyncClient(timeout=2.0) as client:
                response = await client.get(self.source)
                response.raise_for_status()
                return bytes(response.content)
        return await asyncio.to_thread(Path(self.source).read_bytes)


class Verifier:
    """Verifies assertions against one key set, audience and (optional) issuer.

    The resolver reuses one assertion per client for most of its lifetime, so a
    verified assertion is remembered, by its whole compact text (signature included:
    nothing else can match it), until it expires or the keys change; a request
    with an assertion seen before costs a dict lookup, not a signature check.
    """

    MAX_REMEMBERED: Final = 10_000

    def __init__(self, keys: KeySet, *, audience: str, issuer: str | None) -> None:
        self.keys = keys
        self.audience = audience
        self.issuer = issuer
        self._verified: dict[str, Assertion] = {}
        self._generation = keys.generation

    @classmethod
    def from_env(cls, env: Any = os.environ) -> Verifier:
        """Build from the ``JWTKEYMAP_HOOK_*`` variables."""
        source = env.get("JWTKEYMAP_HOOK_JWKS", "")
        if not source:
            raise ConfigError("JWTKEYMAP_HOOK_JWKS is not set")
        refresh = float(env.get("JWTKEYMAP_HOOK_JWKS_REFRESH_SECONDS", "5"))
        return cls(
            KeySet(source, refresh_seconds=refresh),
            audience=env.get("JWTKEYMAP_HOOK_AUDIENCE") or DEFAULT_AUDIENCE,
            issuer=env.get("JWTKEYMAP_HOOK_ISSUER") or None,
        )

    async def verify(self, token: str) -> Assertion:
        """What a valid assertion says; InvalidAssertion otherwise."""
        now = time.time()
        if self._generation != self.keys.generation:
            self._verified.clear()  # a key may be gone: check everything again
            self._generation = self.keys.generation
        known = self._verified.get(token)
        if known is not None and known.expires_at > now:
            return known
        keys = await self.keys.key_for(unverified_kid(token))
        said = verify(token, keys, audience=self.audience, issuer=self.issuer, now=now)
        if self._generation != self.keys.generation:  # the keys were (re)loaded just now
            self._verified.clear()
            self._generation = self.keys.generation
        if len(self._verified) >= self.MAX_REMEMBERED:
            self._verified.clear()
        self._verified[token] = said
        return said


_verifier: Verifier | None = None


def verifier() -> Verifier:
    """The process's verifier, built from the environment on first use."""
    global _verifier
    if _verifier is None:
        _verifier = Verifier.from_env()
    return _verifier


def _refuse(reason: str, message: str) -> Exception:
    exc: Exception = ProxyException(
        message=f"jwtkeymap: {message} ({reason})",
        type=ProxyErrorTypes.auth_error,
        param=HEADER,
        code=401,
    )
    return exc


async def user_api_key_auth(request: Any, api_key: str) -> Any:
    """LiteLLM's custom auth: the asserted key as ``UserAPIKeyAuth``, or ``api_key`` to go on."""
    token = request.headers.get(HEADER)
    if token is None:
        return api_key
    try:
        said = await verifier().verify(token)
    except InvalidAssertion as exc:
        raise _refuse(exc.reason, str(exc)) from None
    except ConfigError as exc:
        raise _refuse("hook_misconfigured", str(exc)) from None
    if said.decision == "fallback":
        return api_key
    if said.decision == "admin":
        if not _is_master_key(api_key):
            raise _refuse("admin_needs_master_key", "an admin decision needs LiteLLM's master key")
        return api_key
    assert said.key_hash is not None  # verify() requires it for keyed decisions
    return await _load_key(request, said.key_hash)


def _is_master_key(api_key: str) -> bool:
    from litellm.proxy import proxy_server

    master = getattr(proxy_server, "master_key", None)
    return bool(master) and hmac.compare_digest(api_key.encode(), str(master).encode())


async def _load_key(request: Any, key_hash: str) -> Any:
    """The key row by hash, through LiteLLM's own resolution and validation."""
    # Read at call time: LiteLLM sets these module globals after the hook is imported.
    from litellm.proxy import proxy_server

    store = _LITELLM["IdentityStore"](
        proxy_server.prisma_client,
        proxy_server.user_api_key_cache,
        proxy_logging_obj=proxy_server.proxy_logging_obj,
    )
    # An unknown hash is LiteLLM's own 401.
    valid_token = store.key_from_principal(await store.resolve(hashed_token=key_hash))
    request_data = await _LITELLM["read_request_body"](request)
    return await _LITELLM["validate_resolved_virtual_key"](
        request=request,
        request_data=request_data,
        valid_token=valid_token,
        api_key=key_hash,
        route=_LITELLM["get_request_route"](request),
        start_time=datetime.now(UTC),
        parent_otel_span=None,
        end_user_id=None,
        end_user_params={},
        _end_user_object=None,
    )
